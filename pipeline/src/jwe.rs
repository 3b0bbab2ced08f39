//! Payload encryption for devices that registered a key: a JWE (RFC 7516) in compact
//! serialisation with `alg: dir` and `enc: A256GCM` (RFC 7518 §4.5, §5.3), the form the
//! Webex mobile SDK decrypts (`JWEObject.parse(p).decrypt(new DirectDecrypter(key))`).
//!
//! ```text
//! BASE64URL(header) . "" . BASE64URL(iv) . BASE64URL(ciphertext) . BASE64URL(tag)
//! header = {"alg":"dir","enc":"A256GCM","kid":"<kid>"}
//! ```
//!
//! Every message gets a fresh random 96-bit IV; the additional authenticated data is the
//! ASCII of the encoded header, so the `kid` cannot be swapped. What the provider body
//! looks like around the JWE (the *envelope*) is built here too, with its exact length, so
//! a producer's payload that would not fit once encrypted can be refused:
//! `{"<clear>":<the object's field, unaltered>,"jwe":"<JWE of the whole object>"}`, where
//! each provider names the field it keeps in clear, if any (APNs: `aps`; no such key when
//! the payload had none, as VoIP pushes may).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The one content encryption devices may register.
pub const ALGORITHM: &str = "A256GCM";
/// Longest key id.
pub const MAX_KID: usize = 64;
/// The field of an envelope that holds the JWE.
pub const FIELD: &str = "jwe";
const TAG_LEN: usize = 16;

/// A device's 256-bit content key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey([u8; 32]);

impl std::fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentKey(<redacted>)")
    }
}

impl ContentKey {
    /// The key from its raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ContentKey(bytes)
    }

    /// Reads a key given in base64 (standard or URL-safe alphabet, padded or not); it
    /// must be exactly 256 bits.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or("is not base64")?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("is {} bits; A256GCM needs 256", b.len() * 8))?;
        Ok(ContentKey(bytes))
    }

    /// The key as AES-256-GCM, for sealing and opening.
    fn aead(&self) -> Result<LessSafeKey, String> {
        UnboundKey::new(&AES_256_GCM, &self.0)
            .map(LessSafeKey::new)
            .map_err(|_| "unusable content key".to_owned())
    }

    /// The raw key, for sealing at rest.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key id used when the device names none: 16 characters derived from the key by
    /// SHA-256 (it identifies the key, it does not reveal it).
    pub fn default_kid(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"pushline-kid\0");
        hash.update(self.0);
        URL_SAFE_NO_PAD.encode(&hash.finalize()[..12])
    }
}

/// A key id: 1–64 characters of `A-Z a-z 0-9 . _ - :` (so the header needs no escaping).
pub fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
}

fn header(kid: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"dir","enc":"A256GCM","kid":"{kid}"}}"#))
}

fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// The length of the compact JWE of `plaintext_len` bytes under a key id of `kid_len`.
pub fn compact_len(plaintext_len: usize, kid_len: usize) -> usize {
    let header_len = r#"{"alg":"dir","enc":"A256GCM","kid":""}"#.len() + kid_len;
    b64_len(header_len) + 2 + b64_len(NONCE_LEN) + 1 + b64_len(plaintext_len) + 1 + b64_len(TAG_LEN)
}

/// Encrypts `plaintext` for the device holding `key`, naming it `kid` (already checked by
/// [`valid_kid`]).
pub fn encrypt(key: &ContentKey, kid: &str, plaintext: &[u8]) -> Result<String, String> {
    let mut iv = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut iv)
        .map_err(|_| "no randomness for the IV")?;
    let sealing = key.aead()?;
    let protected = header(kid);
    let mut body = plaintext.to_vec();
    let tag = sealing
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected.as_bytes()),
            &mut body,
        )
        .map_err(|_| "encryption failed")?;
    let mut out = String::with_capacity(compact_len(plaintext.len(), kid.len()));
    out.push_str(&protected);
    out.push_str("..");
    URL_SAFE_NO_PAD.encode_string(iv, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(&body, &mut out);
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut out);
    Ok(out)
}

/// Decrypts a compact JWE made by [`encrypt`] (used by `pushctl` checks and tests; devices
/// use their own JOSE library).
pub fn decrypt(key: &ContentKey, compact: &str) -> Result<Vec<u8>, String> {
    let parts: Vec<&str> = compact.split('.').collect();
    let [protected, encrypted_key, iv, body, tag] = parts[..] else {
        return Err("not a compact JWE (five parts)".into());
    };
    if !encrypted_key.is_empty() {
        return Err("alg dir has an empty encrypted key".into());
    }
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string());
    let header: serde_json::Value =
        serde_json::from_slice(&decode(protected)?).map_err(|e| e.to_string())?;
    if header["alg"] != "dir" || header["enc"] != ALGORITHM {
        return Err("header is not alg dir, enc A256GCM".into());
    }
    let iv: [u8; NONCE_LEN] = decode(iv)?.try_into().map_err(|_| "IV is not 96 bits")?;
    let mut in_out = decode(body)?;
    in_out.extend_from_slice(&decode(tag)?);
    let opening = key.aead()?;
    let plain = opening
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(protected.as_bytes()),
            &mut in_out,
        )
        .map_err(|_| "authentication failed")?;
    Ok(plain.to_vec())
}

/// The value of `object`'s field `name`, as raw JSON, when it has one.
fn field_of(object: &RawValue, name: &str) -> Result<Option<Box<RawValue>>, String> {
    let fields: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(object.get()).map_err(|e| format!("not a JSON object: {e}"))?;
    Ok(fields.get(name).cloned())
}

/// `object` encrypted into an envelope `{"jwe":"<JWE of object>"}`, keeping the field
/// `clear` (when `object` has it) beside the JWE, unaltered, for the device's operating
/// system to act on (APNs keeps `aps`).
pub fn envelope(
    key: &ContentKey,
    kid: &str,
    object: &RawValue,
    clear: Option<&str>,
) -> Result<Box<RawValue>, String> {
    let kept = match clear {
        Some(name) => field_of(object, name)?.map(|value| (name, value)),
        None => None,
    };
    let jwe = encrypt(key, kid, object.get().as_bytes())?;
    let body = match kept {
        Some((name, value)) => format!(r#"{{"{name}":{},"{FIELD}":"{jwe}"}}"#, value.get()),
        None => format!(r#"{{"{FIELD}":"{jwe}"}}"#),
    };
    RawValue::from_string(body).map_err(|e| format!("envelope: {e}"))
}

/// How long [`envelope`] of `object` is under a key id of `kid_len`, known before
/// encrypting.
pub fn envelope_len(
    object: &RawValue,
    clear: Option<&str>,
    kid_len: usize,
) -> Result<usize, String> {
    let kept = match clear {
        Some(name) => field_of(object, name)?
            .map_or(0, |value| r#""":,"#.len() + name.len() + value.get().len()),
        None => 0,
    };
    Ok(r#"{"":""}"#.len() + FIELD.len() + kept + compact_len(object.get().len(), kid_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ContentKey {
        ContentKey::from_bytes([7; 32])
    }

    #[test]
    fn a_jwe_round_trips_and_names_its_key() {
        let jwe = encrypt(&key(), "k1", b"{\"a\":1}").expect("encrypt");
        assert_eq!(jwe.len(), compact_len(7, 2));
        assert_eq!(jwe.split('.').nth(1), Some(""), "dir: no encrypted key");
        assert_eq!(decrypt(&key(), &jwe).expect("decrypt"), b"{\"a\":1}");
        let header = URL_SAFE_NO_PAD
            .decode(jwe.split('.').next().expect("header"))
            .expect("b64");
        assert_eq!(header, br#"{"alg":"dir","enc":"A256GCM","kid":"k1"}"#);
    }

    #[test]
    fn every_message_gets_its_own_iv() {
        let a = encrypt(&key(), "k", b"same").expect("a");
        let b = encrypt(&key(), "k", b"same").expect("b");
        assert_ne!(a.split('.').nth(2), b.split('.').nth(2));
    }

    #[test]
    fn a_wrong_key_or_a_changed_byte_fails() {
        let jwe = encrypt(&key(), "k", b"secret").expect("encrypt");
        assert!(decrypt(&ContentKey::from_bytes([8; 32]), &jwe).is_err());
        for part in [0, 2, 3, 4] {
            let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
            let flipped = if parts[part].starts_with('A') {
                'B'
            } else {
                'A'
            };
            parts[part].replace_range(0..1, &flipped.to_string());
            assert!(
                decrypt(&key(), &parts.join(".")).is_err(),
                "part {part} changed"
            );
        }
    }

    #[test]
    fn keys_must_be_256_bits_of_base64() {
        let b64 = STANDARD.encode([1u8; 32]);
        assert_eq!(
            ContentKey::from_base64(&b64).expect("std"),
            ContentKey::from_bytes([1; 32])
        );
        assert!(ContentKey::from_base64(&URL_SAFE_NO_PAD.encode([1u8; 32])).is_ok());
        assert!(
            ContentKey::from_base64(&STANDARD.encode([1u8; 16]))
                .expect_err("128 bits")
                .contains("128 bits")
        );
        assert!(ContentKey::from_base64("not base64!").is_err());
        assert_eq!(format!("{:?}", key()), "ContentKey(<redacted>)");
        assert_eq!(key().default_kid().len(), 16);
        assert_ne!(
            key().default_kid(),
            ContentKey::from_bytes([8; 32]).default_kid()
        );
    }

    #[test]
    fn envelopes_keep_a_field_in_clear_and_their_length_is_known_in_advance() {
        let payload =
            RawValue::from_string(r#"{"aps":{"alert":"x"},"secret":"y"}"#.into()).expect("raw");
        let body = envelope(&key(), "kid-1", &payload, Some("aps")).expect("envelope");
        assert_eq!(
            body.get().len(),
            envelope_len(&payload, Some("aps"), 5).expect("len")
        );
        let value: serde_json::Value = serde_json::from_str(body.get()).expect("json");
        assert_eq!(value["aps"]["alert"], "x");
        assert!(value.get("secret").is_none());
        let jwe = value[FIELD].as_str().expect("jwe");
        assert_eq!(
            decrypt(&key(), jwe).expect("decrypt"),
            payload.get().as_bytes()
        );

        let voip = RawValue::from_string(r#"{"callId":"1"}"#.into()).expect("raw");
        let body = envelope(&key(), "k", &voip, Some("aps")).expect("envelope");
        assert!(body.get().starts_with(r#"{"jwe":""#));
        assert_eq!(
            body.get().len(),
            envelope_len(&voip, Some("aps"), 1).expect("len")
        );

        let data = RawValue::from_string(r#"{"m":"x"}"#.into()).expect("raw");
        let map = envelope(&key(), "k", &data, None).expect("envelope");
        assert_eq!(map.get().len(), envelope_len(&data, None, 1).expect("len"));
        let list = RawValue::from_string("[1]".into()).expect("raw");
        assert!(envelope(&key(), "k", &list, Some("aps")).is_err());
    }

    #[test]
    fn key_ids_need_no_escaping() {
        assert!(valid_kid("2026-12:device.1_a"));
        assert!(!valid_kid("a\"b"));
        assert!(!valid_kid(""));
        assert!(!valid_kid(&"k".repeat(65)));
    }
}
