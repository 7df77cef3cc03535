//! The signature on every webhook canaryd sends (notifications and gates alike), so a
//! receiver can tell canaryd's requests from anyone else's and reject replays.
//!
//! The scheme is Standard Webhooks (<https://www.standardwebhooks.com>), symmetric `v1`:
//! three headers, `webhook-id` (stable across retries of one message: the receiver's
//! idempotency key), `webhook-timestamp` (unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`). The scheme's libraries verify
//! it; a key written `whsec_<base64>` is the same key for canaryd and for them.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The message's id, the same for every retry of it.
pub const ID_HEADER: &str = "webhook-id";
/// When this attempt was signed, in unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The HMAC key a secret's text stands for: `whsec_<base64>` decoded (as the scheme's
/// libraries do), any other text as it is.
pub fn decode_key(raw: &[u8]) -> Vec<u8> {
    raw.strip_prefix(b"whsec_")
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim_ascii())
                .ok()
        })
        .unwrap_or_else(|| raw.to_vec())
}

/// `v1,<base64 HMAC-SHA256(key, "<id>.<unix_seconds>.<body>")>`: receivers recompute it,
/// compare in constant time and reject old timestamps, so a captured request cannot be
/// replayed later.
pub fn signature(key: &[u8], id: &str, unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// A `webhook-id` from what identifies the message (`uid/gate/webhook`, a notification's
/// key): the text itself when it is short and made of `A-Za-z0-9_-/:`, otherwise `msg_` and
/// a hash of it. Either way it is a valid header value without `.`, the scheme's separator,
/// whatever names a Canary's author chose.
pub fn message_id(text: &str) -> String {
    let plain = !text.is_empty()
        && text.len() <= 200
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b':'));
    if plain {
        text.to_string()
    } else {
        format!(
            "msg_{}",
            hex::encode(&Sha256::digest(text.as_bytes())[..16])
        )
    }
}

/// Adds `webhook-id` and `webhook-timestamp` to a request, and `webhook-signature` when
/// there is a key (`id` must come from [`message_id`]).
pub fn sign(
    request: reqwest::RequestBuilder,
    key: Option<&[u8]>,
    id: &str,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let now = jiff::Timestamp::now().as_second();
    let request = request
        .header(ID_HEADER, id)
        .header(TIMESTAMP_HEADER, now.to_string());
    match key {
        Some(key) => request.header(SIGNATURE_HEADER, signature(key, id, now, body)),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // base64(HMAC-SHA256("key", "msg_1.1700000000.{}")) computed independently with
        // Python's hmac, hashlib and base64 modules.
        assert_eq!(
            signature(b"key", "msg_1", 1_700_000_000, b"{}"),
            "v1,XaXLFEFQ69Q4+demDWPEv5ydXczDW2mM5crCUEFcFBA="
        );
    }

    #[test]
    fn a_whsec_key_is_its_base64_decoded_bytes() {
        assert_eq!(
            decode_key(b"whsec_MTIzNDU2Nzg5MGFiY2RlZg=="),
            b"1234567890abcdef"
        );
        assert_eq!(decode_key(b"plain text key"), b"plain text key");
        // Not base64 after the prefix: the text as it is.
        assert_eq!(decode_key(b"whsec_not base64!"), b"whsec_not base64!");
    }

    #[test]
    fn message_ids_are_plain_or_hashed_and_never_hold_a_dot() {
        assert_eq!(
            message_id("0b7c/1700000000/RolledBack/1/7d9f"),
            "0b7c/1700000000/RolledBack/1/7d9f"
        );
        let hashed = message_id("uid/gate/web.hook name");
        assert!(hashed.starts_with("msg_") && hashed.len() == 36, "{hashed}");
        assert!(!hashed.contains('.'));
        assert_eq!(hashed, message_id("uid/gate/web.hook name"), "stable");
        assert_ne!(hashed, message_id("uid/gate/web.hook other"));
    }
}
