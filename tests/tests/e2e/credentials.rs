//! Credentials that stop working are seen, not discovered by a silent phone: the periodic
//! check asks APNs and Google's token server, and every push's answer counts too, so
//! `pushline_credential_valid` goes to 0 when the provider refuses the key or the
//! service account; and credentials given inline as base64 work like files.

use dispatcher_apns::config::Config as ApnsConfig;
use dispatcher_fcm::config::Config as FcmConfig;
use harness::mock::apns::MockApns;
use harness::mock::fcm::MockFcm;
use harness::services::{APNS_APP, FCM_APP, KEY_ID};
use harness::stack::Stack;
use harness::webex::apns_payload;

fn valid(provider: &str, app: &str, value: u8) -> String {
    format!(r#"pushline_credential_valid{{app="{app}",provider="{provider}"}} {value}"#)
}

#[tokio::test]
async fn the_periodic_check_sees_a_revoked_key_and_a_deleted_service_account() {
    let stack = Stack::start_with(|c| {
        c.adjust("apns", |a: &mut ApnsConfig| {
            a.apns.credential_check_secs = 1
        });
        c.adjust("fcm", |f: &mut FcmConfig| f.fcm.credential_check_secs = 1);
    })
    .await;
    Stack::wait_metrics(stack.dispatcher("apns"), &[&valid("apns", APNS_APP, 1)]).await;
    Stack::wait_metrics(stack.dispatcher("fcm"), &[&valid("fcm", FCM_APP, 1)]).await;
    // The checks reach no device: APNs refused the impossible token, nothing was sent.
    assert!(stack.providers.get::<MockApns>().delivered().is_empty());

    stack.providers.get::<MockApns>().revoke_key(KEY_ID);
    stack.providers.get::<MockFcm>().delete_service_account();
    Stack::wait_metrics(stack.dispatcher("apns"), &[&valid("apns", APNS_APP, 0)]).await;
    Stack::wait_metrics(stack.dispatcher("fcm"), &[&valid("fcm", FCM_APP, 0)]).await;
}

#[tokio::test]
async fn a_push_refused_for_its_credential_marks_the_app_invalid() {
    let stack = Stack::start().await;
    let token = "7a".repeat(32);
    stack.register_ios("cora", &token).await;
    stack
        .call("cora", Some(&apns_payload("before")), None)
        .await;
    Stack::wait_metrics(stack.dispatcher("apns"), &[&valid("apns", APNS_APP, 1)]).await;

    stack.providers.get::<MockApns>().revoke_key(KEY_ID);
    stack.call("cora", Some(&apns_payload("after")), None).await;
    Stack::wait_metrics(
        stack.dispatcher("apns"),
        &[
            &valid("apns", APNS_APP, 0),
            &format!(
                r#"pushline_pushes_total{{app="{APNS_APP}",outcome="rejected",provider="apns",reason="InvalidProviderToken"}} 1"#
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn credentials_given_inline_as_base64_deliver_like_files() {
    use base64::Engine;
    // Secrets are set in the configuration documents: a typed configuration writes its
    // secrets out redacted.
    let inline = |entry: &mut serde_json::Value, file: &str, base64: &str| {
        let path = entry[file].as_str().expect("a file").to_owned();
        let bytes = std::fs::read(path).expect("read");
        entry[base64] = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
        entry[file] = serde_json::Value::Null;
    };
    let stack = Stack::start_with(|c| {
        let apns = &mut c.dispatcher_mut("apns").config;
        inline(&mut apns["apns"]["apps"][0], "key_file", "key_base64");
        let fcm = &mut c.dispatcher_mut("fcm").config;
        inline(
            &mut fcm["fcm"]["projects"][0],
            "service_account_file",
            "service_account_base64",
        );
    })
    .await;
    stack.register_ios("ines", &"3e".repeat(32)).await;
    stack.register_android("ines", "fcm-token-of-ines").await;
    stack
        .call(
            "ines",
            Some(&apns_payload("inline")),
            Some(&harness::webex::fcm_payload("inline")),
        )
        .await;
    stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, std::time::Duration::from_secs(15))
        .await;
    stack
        .providers
        .get::<MockFcm>()
        .wait_delivered(1, std::time::Duration::from_secs(15))
        .await;
}

/// A PKCS#12 archive of `cert` and `key` (PEM) written by OpenSSL, an implementation
/// pushline does not use to read it; `legacy` picks the SHA-1 PBE schemes (40-bit RC2 for
/// the certificates, 3DES for the key, SHA-1 MAC) that Keychain Access has long exported,
/// else OpenSSL 3's defaults (PBES2 with AES-256-CBC, HMAC-SHA256 MAC).
fn pkcs12(cert: &[u8], key: &[u8], password: &str, legacy: bool) -> Vec<u8> {
    use openssl::nid::Nid;
    let cert = openssl::x509::X509::from_pem(cert).expect("certificate");
    let key = openssl::pkey::PKey::private_key_from_pem(key).expect("key");
    let mut builder = openssl::pkcs12::Pkcs12::builder();
    builder.name("pushline test").pkey(&key).cert(&cert);
    if legacy {
        builder
            .key_algorithm(Nid::PBE_WITHSHA1AND3_KEY_TRIPLEDES_CBC)
            .cert_algorithm(Nid::PBE_WITHSHA1AND40BITRC2_CBC)
            .mac_md(openssl::hash::MessageDigest::sha1());
    }
    builder
        .build2(password)
        .expect("pkcs12")
        .to_der()
        .expect("der")
}

#[tokio::test]
async fn a_pkcs12_certificate_opened_with_its_password_rings() {
    use base64::Engine;
    let mut stack = Stack::start().await;
    let (cert, key) = stack.providers.ca.issue(&[], APNS_APP);
    let p12 = pkcs12(cert.as_bytes(), key.as_bytes(), "correct horse", false);
    let mut config: ApnsConfig = stack.configs.dispatcher("apns").typed();
    let app = &mut config.apps_mut()[0];
    app.team_id = None;
    app.key_id = None;
    app.key_file = None;
    app.certificate_base64 = Some(base64::engine::general_purpose::STANDARD.encode(&p12));
    app.certificate_password = Some(pipeline::config::Secret::new("wrong horse"));
    let refused = config.resolve().expect_err("a wrong password is refused");
    assert!(
        refused
            .to_string()
            .contains("apns.apps[0].certificate_password"),
        "{refused}"
    );
    config.apps_mut()[0].certificate_password =
        Some(pipeline::config::Secret::new("correct horse"));
    config.resolve().expect("the right password opens it");

    let dispatcher = stack
        .replace_dispatcher("apns", |admin, shutdown| {
            dispatcher_apns::serve(config, admin, shutdown)
        })
        .await;
    stack.register_ios("pia", &"5c".repeat(32)).await;
    stack.call("pia", Some(&apns_payload("p12")), None).await;
    let push = &stack
        .providers
        .get::<MockApns>()
        .wait_delivered(1, std::time::Duration::from_secs(15))
        .await[0];
    // The mock accepts a push without a provider token only over a connection whose
    // client certificate chains to its CA: the one inside the archive.
    assert_eq!(push.header("authorization"), None);
    let not_after = openssl::x509::X509::from_pem(cert.as_bytes())
        .expect("certificate")
        .not_after()
        .diff(
            openssl::asn1::Asn1Time::from_unix(0)
                .expect("epoch")
                .as_ref(),
        )
        .map(|d| -(i64::from(d.days) * 86_400 + i64::from(d.secs)))
        .expect("not after");
    Stack::wait_metrics(
        &dispatcher,
        &[&format!(
            r#"pushline_credential_expiry_timestamp_seconds{{app="{APNS_APP}",provider="apns"}} {not_after}"#
        )],
    )
    .await;
}

#[test]
fn a_keychain_style_pkcs12_opens_to_the_same_certificate_and_key() {
    // Keychain's legacy RC2 needs OpenSSL 3's legacy provider to write it.
    let _legacy = openssl::provider::Provider::try_load(None, "legacy", true).expect("legacy");
    let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
    let key = openssl::pkey::PKey::from_rsa(rsa).expect("key");
    let mut name = openssl::x509::X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", "Apple Push Services: com.example.app")
        .expect("cn");
    let name = name.build();
    let mut builder = openssl::x509::X509::builder().expect("builder");
    builder.set_subject_name(&name).expect("subject");
    builder.set_issuer_name(&name).expect("issuer");
    builder.set_pubkey(&key).expect("pubkey");
    let not_before = openssl::asn1::Asn1Time::from_unix(1_700_000_000).expect("time");
    let not_after = openssl::asn1::Asn1Time::from_unix(1_900_000_000).expect("time");
    builder.set_not_before(&not_before).expect("not before");
    builder.set_not_after(&not_after).expect("not after");
    builder
        .sign(&key, openssl::hash::MessageDigest::sha256())
        .expect("sign");
    let cert = builder.build();
    let cert_pem = cert.to_pem().expect("pem");
    let key_pem = key.private_key_to_pem_pkcs8().expect("pem");

    for legacy in [true, false] {
        let p12 = pkcs12(&cert_pem, &key_pem, "s3cret", legacy);
        let read = dispatcher_apns::certificate::read(&p12, None, Some("s3cret"))
            .unwrap_or_else(|e| panic!("legacy={legacy}: {}: {}", e.setting, e.message));
        assert_eq!(read.not_after, 1_900_000_000);
        let identity = String::from_utf8(read.identity_pem).expect("pem text");
        let (certs, keys): (Vec<_>, Vec<_>) = identity
            .split_inclusive("-----\n")
            .collect::<String>()
            .split("-----BEGIN ")
            .filter(|b| !b.is_empty())
            .map(|b| format!("-----BEGIN {b}"))
            .partition(|b| b.starts_with("-----BEGIN CERTIFICATE"));
        assert_eq!(
            certs,
            vec![String::from_utf8(cert_pem.clone()).expect("pem")]
        );
        assert_eq!(keys, vec![String::from_utf8(key_pem.clone()).expect("pem")]);
        reqwest::Identity::from_pem(identity.as_bytes()).expect("the HTTP client takes it");

        let wrong = dispatcher_apns::certificate::read(&p12, None, Some("secret"))
            .err()
            .expect("wrong password");
        assert_eq!(wrong.setting, "certificate_password");
        let with_key = dispatcher_apns::certificate::read(&p12, Some(&key_pem), Some("s3cret"))
            .err()
            .expect("a key beside a PKCS#12");
        assert_eq!(with_key.setting, "certificate_key_file");
    }
}
