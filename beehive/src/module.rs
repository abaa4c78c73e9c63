//! What a module is to the bus.

use async_trait::async_trait;

use crate::context::Context;

/// The error a module may stop with; the core logs it.
pub type ModuleError = Box<dyn std::error::Error + Send + Sync>;

/// A peer on the bus. The core starts every enabled module as its own task and, on shutdown,
/// cancels [`Context::done`] and closes the inboxes; `start` should return soon after.
#[async_trait]
pub trait Module: Send + 'static {
    /// Unique module name, the address other modules send to (e.g. `metaManager`).
    fn name(&self) -> &str;
    /// The group the module belongs to (e.g. `meta`).
    fn group(&self) -> &str;
    /// Whether the core should start it; a disabled module is not registered at all.
    fn enabled(&self) -> bool {
        true
    }
    /// Runs the module until shutdown (or until it has nothing left to do).
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError>;
}
