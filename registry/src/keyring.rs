//! Device keys at rest: every end-to-end key a device registers is sealed with
//! AES-256-GCM under a key-encryption key (KEK) from configuration before it reaches Redis.
//!
//! A sealed key reads `v1.<kek id>.<BASE64URL(nonce ‖ ciphertext ‖ tag)>`; the additional
//! authenticated data is `"pushline-device-key\0" ‖ token` (a label, a zero byte, the
//! device's token), so a sealed key copied onto another device's record does not open,
//! and nothing else sealed under the same KEK opens as a device key. The first configured
//! KEK seals; every configured KEK opens, so a KEK is rotated by putting the new one first
//! and keeping the old ones until every device has registered again (or expired).

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pipeline::config::{ConfigError, Secret};
use pipeline::jwe::ContentKey;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// One configured key-encryption key (`[[devices.key_encryption_keys]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekConfig {
    /// Its id, written beside every key it seals: 1–32 of `A-Z a-z 0-9 _ -`.
    pub id: String,
    /// The 256-bit key, base64.
    #[serde(default)]
    pub key: Option<Secret>,
    /// A file holding the 256-bit key, base64.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Why a sealed key cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsealError {
    /// Sealed under a KEK no longer configured.
    #[error("sealed under key-encryption key `{0}`, which is not configured")]
    UnknownKek(String),
    /// Not a sealed key, or altered, or sealed for another token.
    #[error("sealed key is damaged or belongs to another device")]
    Damaged,
}

/// The configured KEKs: the first seals, all open.
pub struct Keyring {
    keys: Vec<(String, LessSafeKey)>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring").field("kek_ids", &ids).finish()
    }
}

fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

impl Keyring {
    /// Reads the configured KEKs (files included), naming the setting at fault.
    pub fn from_config(configs: &[KekConfig]) -> Result<Self, ConfigError> {
        let mut keys = Vec::with_capacity(configs.len());
        for (i, kek) in configs.iter().enumerate() {
            let setting = format!("devices.key_encryption_keys[{i}]");
            if !valid_id(&kek.id) {
                return Err(ConfigError::invalid(
                    format!("{setting}.id"),
                    "must be 1 to 32 characters of A-Z a-z 0-9 _ -",
                ));
            }
            if keys.iter().any(|(id, _)| *id == kek.id) {
                return Err(ConfigError::invalid(
                    format!("{setting}.id"),
                    format!("`{}` is configured twice", kek.id),
                ));
            }
            let secret = match (&kek.key, &kek.key_file) {
                (Some(key), None) => key.clone(),
                (None, Some(path)) => {
                    pipeline::config::read_secret_file(&format!("{setting}.key_file"), path)?
                }
                _ => {
                    return Err(ConfigError::invalid(
                        setting,
                        "needs exactly one of key or key_file",
                    ));
                }
            };
            let bytes = ContentKey::from_base64(secret.expose())
                .map_err(|why| ConfigError::invalid(format!("{setting}.key"), why))?;
            let unbound = UnboundKey::new(&AES_256_GCM, bytes.expose())
                .map_err(|_| ConfigError::invalid(format!("{setting}.key"), "unusable"))?;
            keys.push((kek.id.clone(), LessSafeKey::new(unbound)));
        }
        Ok(Keyring {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// True when a KEK is configured, so devices may register keys.
    pub fn can_seal(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The additional authenticated data of `token`'s key. The format of every stored
    /// seal: changing it would leave them unopenable.
    fn aad(token: &str) -> Vec<u8> {
        let mut aad = b"pushline-device-key\0".to_vec();
        aad.extend_from_slice(token.as_bytes());
        aad
    }

    /// Seals the content key of the device `token` under the current KEK.
    pub fn seal(&self, token: &str, key: &ContentKey) -> Result<String, String> {
        let (id, kek) = self
            .keys
            .first()
            .ok_or("no devices.key_encryption_keys configured")?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| "no randomness for the nonce")?;
        let mut body = key.expose().to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(Self::aad(token)),
            &mut body,
        )
        .map_err(|_| "sealing failed")?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&body);
        Ok(format!("v1.{id}.{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// Opens a key sealed for the device `token` by any configured KEK.
    pub fn unseal(&self, token: &str, sealed: &str) -> Result<ContentKey, UnsealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(UnsealError::Damaged);
        };
        let (_, kek) = self
            .keys
            .iter()
            .find(|(known, _)| known == id)
            .ok_or_else(|| UnsealError::UnknownKek(id.to_owned()))?;
        let mut bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| UnsealError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(UnsealError::Damaged);
        }
        let mut in_out = bytes.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = bytes.try_into().map_err(|_| UnsealError::Damaged)?;
        let plain = kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(token)),
                &mut in_out,
            )
            .map_err(|_| UnsealError::Damaged)?;
        let key: [u8; 32] = plain.try_into().map_err(|_| UnsealError::Damaged)?;
        Ok(ContentKey::from_bytes(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn kek(id: &str, byte: u8) -> KekConfig {
        KekConfig {
            id: id.into(),
            key: Some(Secret::new(STANDARD.encode([byte; 32]))),
            key_file: None,
        }
    }

    #[test]
    fn a_sealed_key_opens_after_rotation_and_only_for_its_token() {
        let device_key = ContentKey::from_bytes([9; 32]);
        let old = Keyring::from_config(&[kek("k2025", 1)]).expect("old");
        let sealed = old.seal("tok", &device_key).expect("seal");
        assert!(sealed.starts_with("v1.k2025."));
        assert!(!sealed.contains(&STANDARD.encode([9u8; 32])));

        let rotated = Keyring::from_config(&[kek("k2026", 2), kek("k2025", 1)]).expect("new");
        assert_eq!(rotated.unseal("tok", &sealed), Ok(device_key.clone()));
        assert!(
            rotated
                .seal("tok", &device_key)
                .expect("seal")
                .starts_with("v1.k2026.")
        );
        assert_eq!(rotated.unseal("other", &sealed), Err(UnsealError::Damaged));

        let dropped = Keyring::from_config(&[kek("k2026", 2)]).expect("dropped");
        assert_eq!(
            dropped.unseal("tok", &sealed),
            Err(UnsealError::UnknownKek("k2025".into()))
        );
        assert_eq!(
            rotated.unseal("tok", "v1.k2025.AAAA"),
            Err(UnsealError::Damaged)
        );
    }

    #[test]
    fn the_aad_is_the_label_a_zero_byte_and_the_token_as_documented() {
        let keyring = Keyring::from_config(&[kek("k", 3)]).expect("keyring");
        let sealed = keyring
            .seal("tok", &ContentKey::from_bytes([9; 32]))
            .expect("seal");
        let body = sealed.strip_prefix("v1.k.").expect("format");
        let bytes = URL_SAFE_NO_PAD.decode(body).expect("base64url");
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let open = |aad: &[u8]| {
            let kek = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[3; 32]).expect("kek"));
            let nonce = Nonce::try_assume_unique_for_key(nonce).expect("nonce");
            let mut in_out = ciphertext.to_vec();
            kek.open_in_place(nonce, Aad::from(aad), &mut in_out)
                .map(|plain| plain.to_vec())
        };
        assert_eq!(open(b"pushline-device-key\0tok"), Ok(vec![9; 32]));
        assert!(open(b"tok").is_err(), "the token alone is not the AAD");
    }

    #[test]
    fn keks_are_checked_by_name() {
        let error = Keyring::from_config(&[kek("bad id", 1)]).expect_err("id");
        assert!(
            error.to_string().contains("key_encryption_keys[0].id"),
            "{error}"
        );
        let error = Keyring::from_config(&[kek("a", 1), kek("a", 2)]).expect_err("twice");
        assert!(error.to_string().contains("twice"), "{error}");
        let short = KekConfig {
            key: Some(Secret::new(STANDARD.encode([1u8; 16]))),
            ..kek("s", 1)
        };
        let error = Keyring::from_config(&[short]).expect_err("short");
        assert!(error.to_string().contains("256"), "{error}");
        assert!(!Keyring::from_config(&[]).expect("none").can_seal());
    }
}
