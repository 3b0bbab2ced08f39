//! Message encryption for Web Push (RFC 8291) in the `aes128gcm` content coding of RFC
//! 8188, with `ring`'s ECDH, HKDF and AES-GCM.
//!
//! For each message: a fresh P-256 key pair and a random 16-byte salt;
//! `IKM = HKDF(salt = auth, ECDH(ephemeral, p256dh), "WebPush: info\0" ‖ p256dh ‖ ephemeral_public, 32)`,
//! then `CEK = HKDF(salt, IKM, "Content-Encoding: aes128gcm\0", 16)` and
//! `NONCE = HKDF(salt, IKM, "Content-Encoding: nonce\0", 12)`. The body is the header
//! `salt ‖ rs (4096, u32 big-endian) ‖ 65 ‖ ephemeral_public` and one record: the
//! plaintext, the last-record delimiter `0x02`, sealed with AES-128-GCM.

use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{ECDH_P256, EphemeralPrivateKey, UnparsedPublicKey, agree_ephemeral};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// The record size announced in the header: one record holds any Web Push payload.
const RECORD_SIZE: u32 = 4_096;
/// Header bytes before the record: salt, record size, key id length, key id.
pub const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// The last-record delimiter and the GCM tag.
pub const OVERHEAD: usize = HEADER_LEN + 1 + 16;

/// Why a payload could not be encrypted for a subscription.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EceError {
    /// The subscription's `p256dh` is not a usable P-256 public key.
    #[error("the subscription's p256dh key is not a P-256 point")]
    BadKey,
    /// The payload does not fit one record.
    #[error("payload of {0} bytes does not fit one record")]
    TooLarge(usize),
    /// The platform's random source or a primitive failed.
    #[error("encryption failed")]
    Crypto,
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf<const N: usize>(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Result<[u8; N], EceError> {
    let mut out = [0u8; N];
    Salt::new(HKDF_SHA256, salt)
        .extract(ikm)
        .expand(info, Len(N))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| EceError::Crypto)?;
    Ok(out)
}

/// `plaintext` encrypted for the subscription whose keys are `p256dh` (uncompressed
/// P-256 point) and `auth`: the whole request body.
pub fn encrypt(p256dh: &[u8; 65], auth: &[u8; 16], plaintext: &[u8]) -> Result<Vec<u8>, EceError> {
    if plaintext.len() + OVERHEAD - HEADER_LEN > RECORD_SIZE as usize {
        return Err(EceError::TooLarge(plaintext.len()));
    }
    let rng = SystemRandom::new();
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| EceError::Crypto)?;
    let public = ephemeral
        .compute_public_key()
        .map_err(|_| EceError::Crypto)?;
    let public = public.as_ref();
    let shared = agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, p256dh),
        |secret| secret.to_vec(),
    )
    .map_err(|_| EceError::BadKey)?;
    let ikm: [u8; 32] = hkdf(auth, &shared, &[b"WebPush: info\0", p256dh, public])?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EceError::Crypto)?;
    let cek: [u8; 16] = hkdf(&salt, &ikm, &[b"Content-Encoding: aes128gcm\0"])?;
    let nonce: [u8; 12] = hkdf(&salt, &ikm, &[b"Content-Encoding: nonce\0"])?;

    let mut body = Vec::with_capacity(plaintext.len() + OVERHEAD);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(public.len() as u8);
    body.extend_from_slice(public);
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    record.push(2);
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| EceError::Crypto)?);
    // The first (and only) record's nonce is NONCE XOR 0.
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut record,
    )
    .map_err(|_| EceError::Crypto)?;
    body.extend_from_slice(&record);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber() -> [u8; 65] {
        let rng = SystemRandom::new();
        let key = EphemeralPrivateKey::generate(&ECDH_P256, &rng).expect("key");
        key.compute_public_key()
            .expect("public")
            .as_ref()
            .try_into()
            .expect("65 bytes")
    }

    #[test]
    fn the_body_is_a_header_and_one_record() {
        let body = encrypt(&subscriber(), &[1; 16], b"{\"a\":1}").expect("encrypt");
        assert_eq!(body.len(), 7 + OVERHEAD);
        assert_eq!(&body[16..20], &4_096u32.to_be_bytes());
        assert_eq!(body[20], 65);
        assert_eq!(body[21], 4, "uncompressed point");
    }

    #[test]
    fn every_message_has_its_own_salt_and_key() {
        let to = subscriber();
        let a = encrypt(&to, &[1; 16], b"same").expect("a");
        let b = encrypt(&to, &[1; 16], b"same").expect("b");
        assert_ne!(a[..16], b[..16], "salt");
        assert_ne!(a[21..86], b[21..86], "ephemeral key");
        assert_ne!(a[86..], b[86..], "ciphertext");
    }

    #[test]
    fn a_bad_key_or_an_oversized_payload_is_refused() {
        let mut off_curve = [4u8; 65];
        off_curve[64] = 5;
        assert_eq!(encrypt(&off_curve, &[1; 16], b"x"), Err(EceError::BadKey));
        let big = vec![b'x'; 4_096];
        assert_eq!(
            encrypt(&subscriber(), &[1; 16], &big),
            Err(EceError::TooLarge(4_096))
        );
        assert!(encrypt(&subscriber(), &[1; 16], &vec![b'x'; 4_096 - 17]).is_ok());
    }
}
