//! The `pushline-dispatcher-hms` binary: config → telemetry → [`dispatcher_hms::run`].
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    let path = pipeline::config::config_path_from_args(std::env::args());
    let config: dispatcher_hms::config::Config = pipeline::config::load(path.as_deref())?;
    if pipeline::config::print_if_asked(&config, std::env::args()) {
        return Ok(());
    }
    pipeline::telemetry::init(&config.telemetry);
    tokio::runtime::Runtime::new()?.block_on(async {
        let shutdown = pipeline::shutdown::on_signal();
        dispatcher_hms::run(config, shutdown).await
    })?;
    Ok(())
}
