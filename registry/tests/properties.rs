//! Property tests: registration bodies, tokens and person ids from arbitrary input never
//! panic the validators or parsers.
#![allow(missing_docs)]

use proptest::prelude::*;
use registry::api::{PutDevice, SampleRegister};
use registry::{person, validate};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn validators_never_panic(value in any::<String>()) {
        let _ = validate::person_id("p", &value);
        let all = providers::all();
        for provider in all.names() {
            let _ = validate::token(&all, "t", provider, &value);
        }
        let _ = validate::any_token(&all, "t", &value);
        let _ = validate::app("a", &value);
        let _ = person::canonical(&value);
    }

    #[test]
    fn accepted_person_ids_never_break_the_hash_tag(value in any::<String>()) {
        if validate::person_id("p", &value).is_ok() {
            let braces = value.contains('{') || value.contains('}');
            prop_assert!(!braces, "braces accepted");
            prop_assert!(!value.is_empty() && value.chars().count() <= validate::MAX_PERSON_ID);
        }
    }

    #[test]
    fn registration_bodies_from_arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = pipeline::json::parse::<PutDevice>(&body);
        let _ = pipeline::json::parse::<SampleRegister>(&body);
    }

    #[test]
    fn canonical_ids_are_stable(value in "[A-Za-z0-9+/=_-]{0,80}") {
        if let Ok(once) = person::canonical(&value) {
            let once = once.into_owned();
            prop_assert_eq!(person::canonical(&once).map(|c| c.into_owned()), Ok(once));
        }
    }

    #[test]
    fn parsed_person_ids_never_carry_the_stores_separators(value in any::<String>()) {
        if let Ok(id) = person::parse("p", &value) {
            prop_assert!(!id.contains(['{', '}', '\t', '\n']), "{id:?}");
        }
    }
}
