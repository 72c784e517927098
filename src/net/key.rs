//! The gateway's private key: 32 bytes that sign and encrypt connect tokens. Kept in a file as
//! 64 hex digits, readable by its owner only, created on first start if missing. And the tokens
//! themselves: what a login service that holds the key hands each client (`shardmesh token`
//! prints one; the bots make theirs the same way).

use std::io::Write;
use std::path::Path;

use renet_netcode::NETCODE_KEY_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a key (expected {} hex digits)", NETCODE_KEY_BYTES * 2)]
    Malformed { path: String },
}

pub type Key = [u8; NETCODE_KEY_BYTES];

pub use renet_netcode::ConnectToken;

/// Reads the key in `path`, which must exist: a token signed with a key the gateway does not
/// have would be refused.
pub fn load(path: &Path) -> Result<Key, KeyError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
    parse(text.trim()).ok_or_else(|| KeyError::Malformed { path: path.display().to_string() })
}

/// A connect token for client `client_id` of the gateway at `gateway`, signed and encrypted with
/// the gateway's `key`, good for `expire_secs` from `now` (since the unix epoch). The client passes it
/// to netcode's handshake (the connect token as renetcode writes it, 1,172 bytes); the gateway takes
/// `client_id` as the one it serves, and refuses a second connection with the same id while the
/// first lives. A client that stays silent for `TOKEN_TIMEOUT_SECS` is dropped.
pub fn connect_token(
    key: &Key,
    client_id: u64,
    gateway: std::net::SocketAddr,
    expire_secs: u64,
    now: std::time::Duration,
) -> Result<ConnectToken, String> {
    let expire =
        i32::try_from(expire_secs).ok().filter(|s| *s > 0).ok_or("the expiry must be 1 s or more, at most i32::MAX")?;
    let expire = expire as u64;
    ConnectToken::generate(
        now,
        crate::net::gateway::PROTOCOL_ID,
        expire,
        client_id,
        crate::limits::TOKEN_TIMEOUT_SECS,
        vec![gateway],
        None,
        key,
    )
    .map_err(|e| format!("connect token: {e}"))
}

/// A token's bytes as hex (2,344 digits): what `shardmesh token` prints.
pub fn token_to_hex(token: &ConnectToken) -> String {
    let mut bytes = Vec::new();
    token.write(&mut bytes).expect("writing to a vector does not fail");
    hex(&bytes)
}

/// A token printed by [`token_to_hex`], read back (`None`: not one).
pub fn token_from_hex(text: &str) -> Option<ConnectToken> {
    let text = text.trim();
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len() / 2).map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()).collect();
    ConnectToken::read(&mut bytes?.as_slice()).ok()
}

/// Reads the key in `path`, or creates it there from the system's randomness.
pub fn load_or_create(path: &Path) -> Result<Key, KeyError> {
    let io = |source| KeyError::Io { path: path.display().to_string(), source };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(text.trim()).ok_or_else(|| KeyError::Malformed { path: path.display().to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: Key = renet_netcode::generate_random_bytes();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(format!("{}\n", hex(&key)).as_bytes()).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    Ok(key)
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
                Err(e) => Err(io(e)),
            }
        }
        Err(e) => Err(io(e)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse(text: &str) -> Option<Key> {
    if text.len() != NETCODE_KEY_BYTES * 2 || !text.is_ascii() {
        return None;
    }
    let mut key = [0u8; NETCODE_KEY_BYTES];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("shardmesh-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let key = load_or_create(&path).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), key);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(load_or_create(&path), Err(KeyError::Malformed { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_token_prints_as_hex_and_reads_back() {
        let key = [7u8; NETCODE_KEY_BYTES];
        let gateway: std::net::SocketAddr = "127.0.0.1:7777".parse().unwrap();
        let token = connect_token(&key, 42, gateway, 300, std::time::Duration::from_secs(1_800_000_000)).unwrap();
        let text = token_to_hex(&token);
        assert_eq!(text.len(), 2 * 1_172, "renetcode writes a connect token in 1,172 bytes");
        let back = token_from_hex(&text).expect("reads back");
        assert_eq!(back.client_id, 42);
        assert_eq!(back.server_addresses[0], Some(gateway));
        assert_eq!(back.expire_timestamp - back.create_timestamp, 300);
        assert!(token_from_hex(&text[..100]).is_none(), "cut short");
        assert!(token_from_hex("zz").is_none());
        assert!(
            connect_token(&key, 42, gateway, 0, std::time::Duration::from_secs(1_800_000_000)).is_err(),
            "already expired"
        );
    }
}
