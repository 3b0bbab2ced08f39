//! `pushline-mock`: every provider's sandbox (`providers::testing::SANDBOXES`: the mock
//! APNs, FCM with its OAuth endpoint, the Web Push service, …) as one process, for local
//! runs, the container and live checks, and benchmarks. Loopback only unless told.
//!
//! ```text
//! pushline-mock --dir DIR [--port PROVIDER=PORT]… [--port-offset N]
//!               [--control-port 8445] [--bind 127.0.0.1] [--host 127.0.0.1]
//! ```
//!
//! Each provider's mock listens on its sandbox port (APNs 8443, FCM 8444, Web Push 8446,
//! …) plus `--port-offset`, or where `--port` says. Into DIR it writes what the
//! dispatchers need: the credentials the mocks accept and `ca.pem` (trust it);
//! `dispatcher-<provider>.toml`, the provider's part of its dispatcher's configuration
//! pointed at its mock (add `admin_listen` before it and `[nats]` after it);
//! `private-origins.json`, the origins the registry must accept in devices' endpoints
//! (its `[endpoints] private_origins`). Every push received is printed as one line (a Web
//! Push decrypted, as the browser reads it). On the control port, `GET /requests` returns
//! every push as JSON (with its `provider`), `GET /delivered/<provider>` how many pushes
//! the provider's mock accepted (a number), `GET /providers` the providers served, and
//! `POST /devices/<provider>?person=<id>` makes a device the mock accepts and returns the
//! registry's `POST /v1/devices` body for it. In a container, `--bind 0.0.0.0 --host
//! <service name>` makes it reachable (the name goes into the certificate and the URLs
//! the mocks hand out).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use harness::mock::tls::TestCa;
use harness::mock::{Listen, Recorded};
use pipeline::mock::sandbox::Running;

struct Args {
    dir: std::path::PathBuf,
    ports: HashMap<String, u16>,
    port_offset: u16,
    control_port: u16,
    bind: String,
    host: String,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        dir: std::path::PathBuf::new(),
        ports: HashMap::new(),
        port_offset: 0,
        control_port: 8445,
        bind: "127.0.0.1".into(),
        host: "127.0.0.1".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => args.dir = value()?.into(),
            "--port" => {
                let given = value()?;
                let (name, port) = given
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--port takes PROVIDER=PORT, not {given}"))?;
                args.ports.insert(name.to_owned(), port.parse()?);
            }
            "--port-offset" => args.port_offset = value()?.parse()?,
            "--control-port" => args.control_port = value()?.parse()?,
            "--bind" => args.bind = value()?,
            "--host" => args.host = value()?,
            other => anyhow::bail!("unknown flag {other}; see the module docs"),
        }
    }
    anyhow::ensure!(!args.dir.as_os_str().is_empty(), "--dir is required");
    let known: Vec<&str> = providers::testing::SANDBOXES
        .iter()
        .map(|s| s.name())
        .collect();
    if let Some(unknown) = args
        .ports
        .keys()
        .find(|name| !known.contains(&name.as_str()))
    {
        anyhow::bail!("--port {unknown}=…: no such provider; there are {known:?}");
    }
    Ok(args)
}

fn json(provider: &str, r: &Recorded) -> serde_json::Value {
    serde_json::json!({
        "provider": provider,
        "path": r.path,
        "status": r.status,
        "at_ms": r.at_ms,
        "headers": r.headers,
        "body": String::from_utf8_lossy(&r.body),
    })
}

async fn print_pushes(mock: Arc<dyn Running>) {
    let mut seen = 0;
    loop {
        let all = mock.wait_beyond(seen).await;
        for r in &all[seen..] {
            if let Some(line) = mock.describe(r) {
                println!("{line}");
            }
        }
        seen = all.len();
    }
}

/// The document `dispatcher-<provider>.toml` holds.
fn toml_of(part: serde_json::Value) -> anyhow::Result<String> {
    let value: toml::Value = serde_json::from_value(without_nulls(part))?;
    Ok(toml::to_string(&value)?)
}

/// TOML has no null: a setting left unset is left out.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, without_nulls(v)))
            .collect(),
        serde_json::Value::Array(items) => items.into_iter().map(without_nulls).collect(),
        other => other,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    std::fs::create_dir_all(&args.dir)?;
    let ca = TestCa::new();
    let mut mocks: Vec<Arc<dyn Running>> = Vec::new();
    for sandbox in providers::testing::SANDBOXES {
        let port = match args.ports.get(sandbox.name()) {
            Some(port) => *port,
            None => sandbox.sandbox_port() + args.port_offset,
        };
        let at = Listen {
            bind: args.bind.clone(),
            port,
            host: args.host.clone(),
        };
        let mock = sandbox.start(&ca, &at, &args.dir).await;
        let part = mock.dispatcher_config(&args.dir);
        std::fs::write(
            args.dir.join(format!("dispatcher-{}.toml", sandbox.name())),
            toml_of(part)?,
        )?;
        mocks.push(mock);
    }
    let origins: Vec<String> = mocks.iter().flat_map(|m| m.private_origins()).collect();
    // Written last, and whole (renamed into place): scripts wait for it.
    let partial = args.dir.join("private-origins.json.partial");
    std::fs::write(&partial, serde_json::to_string(&origins)?)?;
    std::fs::rename(&partial, args.dir.join("private-origins.json"))?;

    let served = mocks.clone();
    let requested = mocks.clone();
    let devices = mocks.clone();
    let counted = mocks.clone();
    let control = Router::new()
        .route(
            "/providers",
            get(move || {
                let served = served.clone();
                async move {
                    Json(
                        served
                            .iter()
                            .map(|m| serde_json::json!({"name": m.name(), "url": m.url()}))
                            .collect::<Vec<_>>(),
                    )
                }
            }),
        )
        .route(
            "/requests",
            get(move || {
                let requested = requested.clone();
                async move {
                    let all: Vec<serde_json::Value> = requested
                        .iter()
                        .flat_map(|m| {
                            m.pushes()
                                .iter()
                                .map(|r| json(m.name(), r))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    Json(all)
                }
            }),
        )
        .route(
            "/delivered/{provider}",
            get(move |Path(provider): Path<String>| {
                let counted = counted.clone();
                async move {
                    let Some(mock) = counted.iter().find(|m| m.name() == provider) else {
                        return Err((StatusCode::NOT_FOUND, format!("no provider {provider}")));
                    };
                    let delivered = mock.pushes().iter().filter(|r| r.status == 200).count();
                    Ok(delivered.to_string())
                }
            }),
        )
        .route(
            "/devices/{provider}",
            post(
                move |Path(provider): Path<String>,
                      Query(query): Query<HashMap<String, String>>| {
                    let devices = devices.clone();
                    async move {
                        let Some(mock) = devices.iter().find(|m| m.name() == provider) else {
                            return Err((StatusCode::NOT_FOUND, format!("no provider {provider}")));
                        };
                        let Some(person) = query.get("person") else {
                            return Err((StatusCode::BAD_REQUEST, "?person= is required".into()));
                        };
                        Ok(Json(mock.device(person)))
                    }
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.control_port)).await?;
    let listing: Vec<String> = mocks
        .iter()
        .map(|m| format!("{} on {}", m.name(), m.url()))
        .collect();
    println!(
        "mock {}; requests at http://127.0.0.1:{}/requests; credentials and dispatcher settings in {}",
        listing.join(", "),
        args.control_port,
        args.dir.display()
    );
    for mock in &mocks {
        tokio::spawn(print_pushes(mock.clone()));
    }
    axum::serve(listener, control)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
