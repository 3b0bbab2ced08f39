//! The `pushline-gateway` binary: config → telemetry → [`gateway::run`].
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    let path = pipeline::config::config_path_from_args(std::env::args());
    let config: gateway::config::Config = pipeline::config::load(path.as_deref())?;
    if pipeline::config::print_if_asked(&config, std::env::args()) {
        return Ok(());
    }
    pipeline::telemetry::init(&config.telemetry);
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = pipeline::shutdown::on_signal();
        gateway::run(config, shutdown).await
    })?;
    Ok(())
}
