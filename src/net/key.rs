//! The gateway's private key: 32 bytes that sign and encrypt connect tokens. Kept in a file as
//! 64 hex digits, readable by its owner only, created on first start if missing.

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
}
