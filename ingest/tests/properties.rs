//! Property tests: arbitrary bytes and headers never panic the parsers, never verify
//! without the secret, and never become an event unless the input really is one.
#![allow(missing_docs)]

use ingest::config::{ProducersConfig, WebexConfig};
use ingest::webex::{Normalised, normalise};
use pipeline::config::Secret;
use proptest::prelude::*;

fn secrets() -> Vec<Secret> {
    vec![Secret::new("old-secret"), Secret::new("new-secret")]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_signatures_never_verify(body in proptest::collection::vec(any::<u8>(), 0..512), header in proptest::collection::vec(any::<u8>(), 0..80)) {
        prop_assume!(header != ingest::signature::sign(&body, "old-secret").as_bytes());
        prop_assume!(header != ingest::signature::sign(&body, "new-secret").as_bytes());
        prop_assert!(ingest::signature::verify(&body, Some(&header), &secrets()).is_err());
        prop_assert!(ingest::signature::verify_sha256(&body, Some(&header), &secrets()).is_err());
    }

    #[test]
    fn the_real_signature_always_verifies(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let header = ingest::signature::sign(&body, "new-secret");
        prop_assert!(ingest::signature::verify(&body, Some(header.as_bytes()), &secrets()).is_ok());
        let mut tampered = body.clone();
        tampered.push(b' ');
        prop_assert!(ingest::signature::verify(&tampered, Some(header.as_bytes()), &secrets()).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_envelope_parser(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = normalise(&body, &WebexConfig::default(), 1_700_000_000_000, None);
    }

    #[test]
    fn arbitrary_json_is_an_event_only_when_it_names_a_callee_and_a_payload(
        resource in prop_oneof![Just("telephony_push".to_owned()), Just("callMemberships".to_owned()), "[a-z]{1,12}"],
        actor in proptest::option::of("[A-Za-z0-9]{0,20}"),
        apns in proptest::option::of(prop_oneof![Just("{}".to_owned()), Just("[]".to_owned()), Just("1".to_owned()), Just(r#"{"aps":{}}"#.to_owned())]),
    ) {
        let mut data = Vec::new();
        if let Some(a) = &apns { data.push(format!(r#""apnsPayload":{a}"#)); }
        let actor_field = actor.as_ref().map(|a| format!(r#","actorId":"{a}""#)).unwrap_or_default();
        let body = format!(r#"{{"resource":"{resource}","event":"updated"{actor_field},"data":{{{}}}}}"#, data.join(","));
        if let Ok(Normalised::Event(event)) = normalise(body.as_bytes(), &WebexConfig::default(), 1_700_000_000_000, None) {
            prop_assert_eq!(resource.as_str(), "telephony_push");
            prop_assert!(!event.person_id.is_empty());
            let object_payload = apns.as_deref().is_some_and(|a| a.starts_with('{'));
            prop_assert!(object_payload, "only object payloads become events");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_producer_api(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(request) = pipeline::json::parse::<ingest::notify::NotifyRequest<'_>>(&body) {
            let _ = ingest::notify::events(&request, "p", &ProducersConfig::default(), 1_700_000_000_000, None);
        }
    }
}
