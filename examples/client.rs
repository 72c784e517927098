//! A whole game client in a page: connects to `shardmesh serve --listen ADDR` with a connect
//! token (hex, as `shardmesh token` prints it), walks its player in a circle for a while and
//! prints where it is and how many entities it sees, then logs out.
//!
//! ```sh
//! shardmesh serve --data world/ --listen 127.0.0.1:7777 &
//! TOKEN=$(shardmesh token --key-file world/gateway.key --client-id 1234 --connect 127.0.0.1:7777)
//! cargo run --release --example client -- $TOKEN 10
//! ```

use std::time::{Duration, Instant};

use shardmesh::net::harness::Client;
use shardmesh::net::viewer::Viewer;
use shardmesh::net::wire::{self, ClientMsg, Notice, Update, INPUT_CHANNEL, NOTICE_CHANNEL, UPDATE_CHANNEL};
use shardmesh::protocol::Action;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let hex = args.next().ok_or("usage: client TOKEN_HEX [SECONDS]")?;
    let seconds: f64 = args.next().map_or(Ok(10.0), |s| s.parse()).map_err(|e| format!("seconds: {e}"))?;
    let token = shardmesh::net::key::token_from_hex(&hex).ok_or("the token is not a connect token in hex")?;
    let mut client = Client::with_token(token).map_err(|e| e.to_string())?;
    let mut viewer = Viewer::default();
    let (began, mut seq, mut last_print) = (Instant::now(), 0u32, Instant::now());
    while began.elapsed().as_secs_f64() < seconds {
        client.pump();
        while let Some(bytes) = client.renet.receive_message(NOTICE_CHANNEL) {
            if let Ok(notice) = wire::decode::<Notice>(&bytes) {
                return Err(format!("refused: {notice}"));
            }
        }
        if !client.netcode.is_connected() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // Take in the tick's updates and acknowledge the newest, so the next is a difference.
        let mut ack = None;
        while let Some(bytes) = client.renet.receive_message(UPDATE_CHANNEL) {
            if let Ok(update) = wire::decode::<Update>(&bytes) {
                ack = viewer.take_update(&update).map(|s| s.tick).or(ack);
            }
        }
        if let Some(tick) = ack {
            client.renet.send_message(INPUT_CHANNEL, wire::encode(&ClientMsg::Ack { tick }));
        }
        // Walk in a circle: one input a tick.
        let a = began.elapsed().as_secs_f32() * 0.5;
        seq += 1;
        let action = Action::Move([a.cos(), a.sin(), 0.0]);
        client.renet.send_message(INPUT_CHANNEL, wire::encode(&ClientMsg::Input { seq, action }));
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            match viewer.me {
                Some(me) => println!("at {me:.1}, seeing {} entities", viewer.view().len()),
                None => println!("connected, waiting for the first update"),
            }
        }
        std::thread::sleep(Duration::from_millis(33));
    }
    // Logging out parks the player, with what it carries, until the account's next login.
    client.disconnect();
    println!("logged out; {} updates, {} glitches", viewer.counts.updates, viewer.counts.glitches());
    Ok(())
}
