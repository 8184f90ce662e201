//! The tether's own diagnostics (the debug port, a file, or stderr), with the level following
//! the config's debug level: 0 info, 1 debug, 2 and above trace.

use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Changes the level later.
pub type LevelHandle = reload::Handle<LevelFilter, tracing_subscriber::Registry>;

/// Installs the global subscriber writing to `out`.
pub fn init(out: Box<dyn Write + Send>) -> LevelHandle {
    let (filter, handle) = reload::Layer::new(LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(Mutex::new(out))
        .with_ansi(false)
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    handle
}

/// The level for a VIC debug level.
pub fn level_for(debug: i32) -> LevelFilter {
    match debug {
        i32::MIN..=0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}
