//! Accounts in the simulator: a few log in and out as the seed draws, each through a random
//! node's gateway, as `net::Seats` numbers and routes them. A first login makes the account's
//! player at the spawn point; the bots then drive it like any player (it walks, picks up, boards
//! ships), so logouts find it carrying things, aboard, between servers or cores. A whole-process
//! crash logs every account out. Once the world has settled, the session rule must hold: every
//! logged-in account's player is held by a server, every logged-out one is parked with what it
//! carries.

use std::collections::BTreeSet;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::limits::{SIM_ACCOUNT_RECONNECT, SIM_ACCOUNT_SWITCH_PER_TICK};
use crate::node::Session;
use crate::protocol::Replication;
use crate::world::EntityId;

/// Accounts `0..count` of the simulator's own numbering (no world player is an account's).
pub struct SimAccounts {
    rng: ChaCha8Rng,
    /// Each account's login: the node it came through and its session, if it is logged in.
    online: Vec<Option<(usize, u64)>>,
    /// Accounts' players that exist (made, or read back after a crash).
    known: BTreeSet<EntityId>,
    sessions: u64,
    /// What each node's gateway has for it this tick.
    pub pending: Vec<Vec<Session>>,
    pub logins: u64,
    pub logouts: u64,
}

impl SimAccounts {
    pub fn new(seed: u64, nodes: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xacc0_u64 << 32);
        let count = rng.random_range(2..=6);
        Self {
            rng,
            online: vec![None; count],
            known: BTreeSet::new(),
            sessions: 0,
            pending: vec![Vec::new(); nodes],
            logins: 0,
            logouts: 0,
        }
    }

    pub fn describe(&self) -> String {
        format!("accounts={}", self.online.len())
    }

    pub fn player(account: usize) -> EntityId {
        EntityId::of_account(account as u32)
    }

    /// Before a tick of the faulty phase: each account may log in or out.
    pub fn before_tick(&mut self) {
        for account in 0..self.online.len() {
            if !self.rng.random_bool(SIM_ACCOUNT_SWITCH_PER_TICK) {
                continue;
            }
            let player = Self::player(account);
            match self.online[account].take() {
                Some((node, session)) => {
                    self.pending[node].push(Session { player, session, online: false, create: false });
                    self.logouts += 1;
                    // A client that drops and reconnects at once, perhaps through another core:
                    // a third slice may hear the new login before the old logout.
                    if self.rng.random_bool(SIM_ACCOUNT_RECONNECT) {
                        self.log_in(account);
                    }
                }
                None => self.log_in(account),
            }
        }
    }

    fn log_in(&mut self, account: usize) {
        let player = Self::player(account);
        let node = self.rng.random_range(0..self.pending.len());
        self.sessions += 1;
        let create = self.known.insert(player);
        self.pending[node].push(Session { player, session: self.sessions, online: true, create });
        self.online[account] = Some((node, self.sessions));
        self.logins += 1;
    }

    /// The process crashed and was recovered: nobody is logged in, and the accounts' players are
    /// those the recovered world has (a first login whose making was never synced is undone).
    pub fn process_crashed(&mut self, slices: &[&Replication]) {
        self.online.iter_mut().for_each(|o| *o = None);
        self.pending.iter_mut().for_each(Vec::clear);
        self.known =
            slices.iter().flat_map(|s| s.records().keys()).filter(|id| id.account().is_some()).copied().collect();
    }

    /// After the world settled: the session rule holds for every account.
    pub fn check_settled(&self, slices: &[&Replication]) -> Result<(), String> {
        for (account, online) in self.online.iter().enumerate() {
            let player = Self::player(account);
            let Some(slice) = slices.iter().find(|s| s.records().contains_key(&player)) else {
                if self.known.contains(&player) {
                    return Err(format!("account {account}'s player {player} is lost"));
                }
                continue;
            };
            let record = &slice.records()[&player];
            let parked = slice.offline().contains(&player);
            match online {
                Some(_) if parked || record.authority.is_none() => {
                    return Err(format!(
                        "account {account} is logged in, its player {player} is parked or held by none"
                    ))
                }
                None if !parked => {
                    return Err(format!(
                        "account {account} is logged out, its player {player} is not parked (held by {:?})",
                        record.authority
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}
