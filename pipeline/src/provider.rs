//! The seam every push provider plugs into.
//!
//! The shared code never names a provider. A provider is its own crate that supplies a
//! [`Spec`] (what the registry and ingest must know of it: its device addresses, which
//! devices get which events, its part of an event and how that part is encrypted) and a
//! dispatcher ([`crate::dispatch::Provider`]); the `providers` crate lists them, once.
//! From a provider's [`Spec::name`] come its stream (`PUSH_<NAME>`), subjects
//! (`push.<name>.<environment>`), consumer (`dispatch-<name>`), dead-letter stage, metric
//! label, its field of `/v1/notify` and its key in [`crate::contract::Event::parts`].
//!
//! [`conformance`] is the one test a new provider runs to learn what it still lacks.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::contract::{Channel, Class, Environment};
use crate::jwe::ContentKey;

/// Why a device got no encrypted payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The device registered no key.
    NoKey,
    /// Its key was sealed under a KEK that is no longer configured, or is damaged.
    KeyUnreadable,
    /// The encrypted body is over the provider's limit.
    TooLarge,
    /// The part cannot be encrypted as the provider needs (say, it is not an object).
    Malformed,
    /// The part shows something in clear that encryption could not hide (a display
    /// notification drawn by the operating system).
    Cleartext,
}

impl Skip {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NoKey => "no_key",
            Skip::KeyUnreadable => "key_unreadable",
            Skip::TooLarge => "too_large",
            Skip::Malformed => "malformed",
            Skip::Cleartext => "cleartext",
        }
    }
}

/// What the shared code must know of a provider.
pub trait Spec: Send + Sync + 'static {
    /// The provider's name: 1 to 16 characters of `a-z 0-9`.
    fn name(&self) -> &'static str;

    /// The environments its devices register in (a job's subject names it).
    fn environments(&self) -> &'static [Environment] {
        &[Environment::Production]
    }

    /// The channel a device registers on when it names none.
    fn default_channel(&self) -> Channel;

    /// Whether a device registered on `channel` gets an event of `class`.
    fn wants(&self, class: Class, channel: Channel) -> bool;

    /// Checks a device's token in the provider's format; the message names `field`.
    fn check_token(&self, field: &str, token: &str) -> Result<(), String>;

    /// Whether this provider's jobs are **held** for the device to take rather than sent
    /// by a dispatcher: in-app messages, kept in the `INAPP` stream on the subject of the
    /// device and person ([`crate::topology::Topology::inapp_subject`]) until a gateway
    /// delivers them to the device's live connection (`docs/inapp.md`). Such a provider
    /// has no push stream and no dispatcher.
    fn held(&self) -> bool {
        false
    }

    /// The URL a push to this device connects to, when the device chose it (a Web Push
    /// subscription's endpoint): the registry holds it to [`crate::egress`]'s policy.
    /// `None` for providers whose devices are reached through the provider's own host.
    fn endpoint(&self, _token: &str) -> Option<reqwest::Url> {
        None
    }

    /// Checks what else a device registers to be reached (a Web Push subscription's
    /// keys), returning it as it is to be stored. Providers that need nothing refuse any.
    fn check_keys(
        &self,
        field: &str,
        keys: Option<&RawValue>,
    ) -> Result<Option<Box<RawValue>>, String> {
        match keys {
            None => Ok(None),
            Some(_) => Err(format!(
                "`{field}` is not taken for {} devices",
                self.name()
            )),
        }
    }

    /// A producer's request for this provider (its field of `/v1/notify`, or what a
    /// webhook adapter builds) checked and completed with its defaults: the part carried
    /// to the dispatcher. Messages name fields under `field`.
    fn part(
        &self,
        field: &str,
        class: Class,
        encrypt: bool,
        request: &RawValue,
    ) -> Result<Box<RawValue>, String>;

    /// The part that rings a call on this provider's devices, for a webhook adapter:
    /// `payload` (a JSON object) is the producer's payload for this provider when `own`,
    /// carried as given (one the provider refuses is dead-lettered by its dispatcher,
    /// where operators see it, while the callee's other devices still ring); otherwise
    /// it is the call's description the producer sent for another provider, and the
    /// answer is `None` when this provider cannot ring from that.
    fn call_part(&self, payload: &RawValue, own: bool) -> Option<Box<RawValue>>;

    /// `part` encrypted for one device with its key ([`crate::jwe`]), in the form the
    /// device's app reads.
    fn encrypt(&self, part: &RawValue, key: &ContentKey, kid: &str) -> Result<Box<RawValue>, Skip>;

    /// `part` carrying the person's unread inbox count where this provider's apps show
    /// one (an app's `inbox_badge` policy); `None` when the provider has no such place
    /// or the part cannot hold it (it is then sent as it is).
    fn badge(&self, _part: &RawValue, _unread: u64) -> Option<Box<RawValue>> {
        None
    }
}

/// `object` (a part's payload) sealed for one device: the JWE envelope of
/// [`crate::jwe::envelope`] keeping `clear` in clear, refused when it would be over
/// `limit` bytes. What a provider's [`Spec::encrypt`] does to its payload field.
pub fn seal(
    object: &RawValue,
    key: &ContentKey,
    kid: &str,
    clear: Option<&str>,
    limit: usize,
) -> Result<Box<RawValue>, Skip> {
    let len = crate::jwe::envelope_len(object, clear, kid.len()).map_err(|_| Skip::Malformed)?;
    if len > limit {
        return Err(Skip::TooLarge);
    }
    crate::jwe::envelope(key, kid, object, clear).map_err(|error| {
        tracing::error!(%error, "cannot encrypt a payload");
        Skip::KeyUnreadable
    })
}

/// The providers a deployment knows, in a fixed order.
#[derive(Clone)]
pub struct Providers(Arc<[&'static dyn Spec]>);

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Providers {
    /// The list; panics on a name that breaks the rules or is given twice, which is a
    /// mistake in the one list of providers, found by its first test.
    pub fn new(specs: &[&'static dyn Spec]) -> Self {
        for (i, spec) in specs.iter().enumerate() {
            if let Err(error) = check_name(spec.name()) {
                panic!("{error}");
            }
            assert!(
                specs[..i].iter().all(|other| other.name() != spec.name()),
                "provider `{}` is listed twice",
                spec.name()
            );
        }
        Providers(specs.into())
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<&'static dyn Spec> {
        self.0.iter().find(|spec| spec.name() == name).copied()
    }

    /// Every provider.
    pub fn iter(&self) -> impl Iterator<Item = &'static dyn Spec> + '_ {
        self.0.iter().copied()
    }

    /// Every provider's name.
    pub fn names(&self) -> Vec<&'static str> {
        self.iter().map(|spec| spec.name()).collect()
    }

    /// The names of the providers a dispatcher sends for (not [`Spec::held`]): one push
    /// stream and one dispatcher each.
    pub fn dispatched(&self) -> Vec<&'static str> {
        self.iter()
            .filter(|spec| !spec.held())
            .map(|spec| spec.name())
            .collect()
    }

    /// Whether any provider is [`Spec::held`] (the `INAPP` stream is then needed).
    pub fn holds(&self) -> bool {
        self.iter().any(|spec| spec.held())
    }

    /// `apns, fcm, …` for messages.
    pub fn listed(&self) -> String {
        self.names().join(", ")
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 16
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "provider name `{name}` must be 1 to 16 characters of a-z 0-9"
        ));
    }
    Ok(())
}

/// What every provider must do, checked on `spec` with `token` (a token it accepts),
/// `keys` (the keys such a device registers, if any) and `request` (a producer request
/// it accepts for class `call`). A provider's crate runs it in a test; it panics naming
/// what is missing or wrong.
pub fn conformance(
    spec: &'static dyn Spec,
    token: &str,
    keys: Option<&RawValue>,
    request: &RawValue,
) {
    let name = spec.name();
    if let Err(error) = check_name(name) {
        panic!("{error}");
    }
    assert!(
        !spec.environments().is_empty(),
        "{name}: at least one environment"
    );
    let stored = spec
        .check_keys("keys", keys)
        .unwrap_or_else(|error| panic!("{name}: its own keys are refused: {error}"));
    assert_eq!(
        stored.is_some(),
        keys.is_some(),
        "{name}: keys kept as given"
    );
    spec.check_token("token", token)
        .unwrap_or_else(|error| panic!("{name}: its own token is refused: {error}"));
    for bad in ["", "a b", "\u{0}"] {
        let error = spec
            .check_token("token", bad)
            .expect_err(&format!("{name}: the token {bad:?} must be refused"));
        assert!(
            error.contains("`token`"),
            "{name}: the message names the field: {error}"
        );
    }
    assert!(
        spec.wants(Class::Call, spec.default_channel())
            || spec.wants(Class::Alert, spec.default_channel()),
        "{name}: a device on the default channel gets something"
    );
    let part = spec
        .part(name, Class::Call, false, request)
        .unwrap_or_else(|error| panic!("{name}: its own request is refused: {error}"));
    let again = spec
        .part(name, Class::Call, false, &part)
        .unwrap_or_else(|error| panic!("{name}: its own part is refused as a request: {error}"));
    assert_eq!(part.get(), again.get(), "{name}: a part is its own request");
    // A held provider (in-app) rings nothing: calls ring by push.
    if !spec.held() {
        let call = RawValue::from_string(r#"{"callId":"c"}"#.into()).expect("json");
        let ringing = spec.call_part(&call, true).unwrap_or_else(|| {
            panic!("{name}: a call cannot ring with the producer's own payload")
        });
        spec.part(name, Class::Call, false, &ringing)
            .unwrap_or_else(|error| {
                panic!("{name}: its call part is refused as a request: {error}")
            });
    }
    let not_an_object = RawValue::from_string("[]".into()).expect("json");
    let error = spec
        .part(name, Class::Call, false, &not_an_object)
        .expect_err(&format!(
            "{name}: a request that is not an object is refused"
        ));
    assert!(
        error.contains(name),
        "{name}: the message names the field: {error}"
    );
    let key = ContentKey::from_bytes([7; 32]);
    let sealed = spec
        .encrypt(&part, &key, "kid")
        .unwrap_or_else(|skip| panic!("{name}: its part cannot be encrypted: {skip:?}"));
    assert_ne!(
        sealed.get(),
        part.get(),
        "{name}: encryption changes the part"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl Spec for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn default_channel(&self) -> Channel {
            Channel::Alert
        }
        fn wants(&self, _: Class, _: Channel) -> bool {
            true
        }
        fn check_token(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn part(
            &self,
            _: &str,
            _: Class,
            _: bool,
            request: &RawValue,
        ) -> Result<Box<RawValue>, String> {
            Ok(request.to_owned())
        }
        fn call_part(&self, payload: &RawValue, _: bool) -> Option<Box<RawValue>> {
            Some(payload.to_owned())
        }
        fn encrypt(&self, part: &RawValue, _: &ContentKey, _: &str) -> Result<Box<RawValue>, Skip> {
            Ok(part.to_owned())
        }
    }

    static A: Named = Named("a1");
    static B: Named = Named("b");
    static BAD: Named = Named("Web-Push");

    #[test]
    fn providers_are_found_by_name_in_their_order() {
        let providers = Providers::new(&[&A, &B]);
        assert_eq!(providers.names(), ["a1", "b"]);
        assert_eq!(providers.get("b").map(|s| s.name()), Some("b"));
        assert!(providers.get("c").is_none());
        assert_eq!(providers.listed(), "a1, b");
    }

    #[test]
    #[should_panic(expected = "listed twice")]
    fn a_provider_listed_twice_is_a_mistake() {
        Providers::new(&[&A, &B, &A]);
    }

    #[test]
    #[should_panic(expected = "a-z 0-9")]
    fn a_name_must_fit_subjects_and_stream_names() {
        Providers::new(&[&BAD]);
    }
}
