//! The tether's own diagnostics (the debug port, a file, or stderr), with the level following
//! the config's debug level: 0 info, 1 debug, 2 and above trace.

use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
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
        .with_timer(WallAndBoot)
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init();
    handle
}

/// Wall-clock time followed by the time since boot as the kernel prints it (`[    4.074258]`),
/// so that the debug port's kernel and tether lines line up.
struct WallAndBoot;

impl FormatTime for WallAndBoot {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        tracing_subscriber::fmt::time::SystemTime.format_time(w)?;
        match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
            Ok(t) => write!(w, " [{:5}.{:06}]", t.tv_sec(), t.tv_nsec() / 1000),
            Err(_) => Ok(()),
        }
    }
}

/// The level for a VIC debug level.
pub fn level_for(debug: i32) -> LevelFilter {
    match debug {
        i32::MIN..=0 => LevelFilter::INFO,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}
