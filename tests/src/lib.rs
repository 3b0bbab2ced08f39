//! pushline's test harness: real `nats-server -js` and `redis-server` per test, services
//! run in-process on port 0, and condition waits with timeouts (never fixed sleeps).
//!
//! # Layout
//!
//! - [`servers`]: spawning and stopping `nats-server` and `redis-server`.
//! - [`clusters`]: a JetStream cluster, Redis Cluster and Redis Sentinel, with node kills.
//! - [`drill`]: fault drills under load and their reports (tests and `pushline-drill`).
//! - [`logs`]: capturing the services' log for tests that read it.
//! - [`services`]: running each service in-process with test configuration.
//! - [`stack`]: the whole pipeline with every provider's mock and dispatcher (the
//!   providers' sandboxes, `providers::testing::SANDBOXES`), for end-to-end tests.
//! - [`bench`]: helpers shared by the benchmark binaries.
//! - [`mock`]: the providers' mocks (each from its own crate's `testing` module, on
//!   [`pipeline::mock`]'s frame) and mock Webex APIs.
//! - [`wait`]: waiting for a condition with a deadline.
//! - [`webex`]: building and signing Webex webhooks.
#![forbid(unsafe_code)]

pub mod bench;
pub mod clusters;
pub mod drill;
pub mod logs;
pub mod mock;
pub mod servers;
pub mod services;
pub mod stack;
pub mod wait;
pub mod webex;

/// The part of `parts` for `provider`, read as that provider's own type.
pub fn part<T: serde::de::DeserializeOwned>(
    parts: &pipeline::contract::Parts,
    provider: &str,
) -> T {
    let raw = parts
        .get(provider)
        .unwrap_or_else(|| panic!("no {provider} part"));
    serde_json::from_str(raw.get()).unwrap_or_else(|e| panic!("{provider} part: {e}"))
}

/// Every crate root's `# Layout` section names each of its public modules, so the list a
/// newcomer reads first cannot drift from the crate.
#[cfg(test)]
mod layout {
    use std::path::Path;

    /// The `pub mod` names of a crate root missing from its `# Layout` section.
    fn unlisted(root: &str) -> Vec<String> {
        let docs: Vec<&str> = root
            .lines()
            .filter_map(|line| line.strip_prefix("//!"))
            .collect();
        let section: String = docs
            .iter()
            .skip_while(|line| line.trim() != "# Layout")
            .skip(1)
            .take_while(|line| !line.trim_start().starts_with("# "))
            .map(|line| format!("{line}\n"))
            .collect();
        root.lines()
            .filter_map(|line| line.trim().strip_prefix("pub mod "))
            .map(|rest| rest.trim_end_matches(['{', ';', ' ']).to_owned())
            .filter(|name| !section.contains(&format!("[`{name}`]")))
            .collect()
    }

    /// The workspace's member folders, from its `Cargo.toml`.
    fn members(workspace: &Path) -> Vec<String> {
        let manifest = std::fs::read_to_string(workspace.join("Cargo.toml")).expect("Cargo.toml");
        manifest
            .split("members = [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .expect("workspace members")
            .split(',')
            .map(|member| member.trim().trim_matches('"').to_owned())
            .filter(|member| !member.is_empty())
            .collect()
    }

    #[test]
    fn every_public_module_is_named_in_its_crates_layout() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut missing = Vec::new();
        let mut roots = 0;
        for member in members(&workspace) {
            let Ok(root) = std::fs::read_to_string(workspace.join(&member).join("src/lib.rs"))
            else {
                continue;
            };
            roots += 1;
            missing.extend(
                unlisted(&root)
                    .into_iter()
                    .map(|name| format!("{member}: {name}")),
            );
        }
        assert!(roots >= 5, "the crate roots were not found");
        assert!(
            missing.is_empty(),
            "not in their crate's `# Layout`: {missing:?}"
        );
    }

    #[test]
    fn a_module_missing_from_the_layout_is_found() {
        let root = "//! # Layout\n//!\n//! - [`a`]: one.\n//!\n//! # Endpoints\n//! [`b`]\npub mod a;\npub mod b;\n";
        assert_eq!(unlisted(root), ["b"]);
        assert_eq!(unlisted("pub mod c;\n"), ["c"]);
    }
}
