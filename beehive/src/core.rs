//! Starting modules and stopping them on a signal.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::CoreConfig;
use crate::context::Context;
use crate::error::Result;
use crate::module::Module;

/// Registers modules, runs the enabled ones, and stops them all on shutdown.
pub struct Core {
    config: CoreConfig,
    ctx: Context,
    shutdown: CancellationToken,
    modules: Vec<Box<dyn Module>>,
}

/// Triggers a shutdown of the core it came from; cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Begins shutdown: modules see [`Context::done`] resolve and their inboxes close.
    pub fn shutdown(&self) {
        self.0.cancel()
    }
}

/// How each module ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Modules that returned `Ok` (before or during shutdown).
    pub stopped: Vec<String>,
    /// Modules that returned an error or panicked, with the reason.
    pub failed: Vec<(String, String)>,
    /// Modules still running when the grace period ran out; they were aborted.
    pub abandoned: Vec<String>,
}

impl Core {
    /// A core with validated settings.
    pub fn new(config: CoreConfig) -> Result<Self> {
        config.validate()?;
        let shutdown = CancellationToken::new();
        Ok(Core {
            ctx: Context::with_shutdown(config.inbox_capacity, shutdown.clone()),
            config,
            shutdown,
            modules: Vec::new(),
        })
    }

    /// The bus the modules share.
    pub fn context(&self) -> Context {
        self.ctx.clone()
    }

    /// A handle that stops [`Core::run`] / [`Core::run_until`] from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Registers a module: an enabled one gets its inbox now, so others can send to it
    /// before it starts; a disabled one is logged and dropped.
    pub fn register(&mut self, module: Box<dyn Module>) -> Result<()> {
        if !module.enabled() {
            log::info!("module {} is disabled, not starting it", module.name());
            return Ok(());
        }
        self.ctx.add_module(module.name(), module.group())?;
        self.modules.push(module);
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM (or the shutdown handle), then stops every module.
    pub async fn run(self) -> ShutdownReport {
        self.run_until(termination_signal()).await
    }

    /// Runs until `stop` resolves (or the shutdown handle fires, or every module has
    /// returned), then stops every module within the grace period.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> ShutdownReport {
        let Core {
            config,
            ctx,
            shutdown,
            modules,
        } = self;
        let mut tasks = JoinSet::new();
        let mut names = HashMap::new();
        for module in modules {
            let name = module.name().to_owned();
            log::info!("starting module {name}");
            let handle = tasks.spawn(module.start(ctx.clone()));
            names.insert(handle.id(), name);
        }

        let mut report = ShutdownReport::default();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = shutdown.cancelled() => break,
                joined = tasks.join_next_with_id() => match joined {
                    Some(joined) => record(&mut report, &names, joined, false),
                    None => break,
                },
            }
        }

        log::info!("shutting down {} module(s)", tasks.len());
        shutdown.cancel();
        ctx.close_all();
        let grace = tokio::time::sleep(config.grace_period());
        tokio::pin!(grace);
        while !tasks.is_empty() {
            tokio::select! {
                () = &mut grace => break,
                Some(joined) = tasks.join_next_with_id() => record(&mut report, &names, joined, true),
            }
        }
        if !tasks.is_empty() {
            tasks.abort_all();
            while let Some(joined) = tasks.join_next_with_id().await {
                let id = match &joined {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let name = names.get(&id).cloned().unwrap_or_default();
                log::warn!(
                    "module {name} did not stop within {:?}; abandoned",
                    config.grace_period()
                );
                report.abandoned.push(name);
            }
        }
        report
    }
}

type Joined = std::result::Result<
    (
        tokio::task::Id,
        std::result::Result<(), crate::module::ModuleError>,
    ),
    tokio::task::JoinError,
>;

fn record(
    report: &mut ShutdownReport,
    names: &HashMap<tokio::task::Id, String>,
    joined: Joined,
    shutting_down: bool,
) {
    let (id, outcome) = match joined {
        Ok((id, Ok(()))) => (id, Ok(())),
        Ok((id, Err(e))) => (id, Err(e.to_string())),
        Err(e) => (e.id(), Err(format!("task failed: {e}"))),
    };
    let name = names.get(&id).cloned().unwrap_or_default();
    match outcome {
        Ok(()) => {
            if shutting_down {
                log::info!("module {name} stopped");
            } else {
                log::warn!("module {name} returned before shutdown");
            }
            report.stopped.push(name);
        }
        Err(reason) => {
            log::error!("module {name} failed: {reason}");
            report.failed.push((name, reason));
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen for SIGTERM: {e}; waiting for SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT received"),
        _ = term.recv() => log::info!("SIGTERM received"),
    }
}
