//! The bus itself: addressing modules and groups, bounded inboxes, sync request/response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::Message;
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result, TrySendError};
use crate::lane::Lanes;
use crate::pending::{Pending, Slot};

/// A handle on the bus, cheap to clone; every module gets one.
#[derive(Clone)]
pub struct Context {
    shared: Arc<Shared>,
}

struct Shared {
    /// Read on every send, written only when modules come and go: readers take a snapshot
    /// without locking and a writer swaps in a new one.
    registry: ArcSwap<Registry>,
    /// Serializes registry writers (read-copy-update).
    writer: Mutex<()>,
    pending: Pending,
    lanes: Lanes,
    capacity: usize,
    shutdown: CancellationToken,
}

#[derive(Clone, Default)]
struct Registry {
    modules: HashMap<String, Mailbox>,
    /// Open members of each group, in registration order.
    groups: HashMap<String, Vec<String>>,
}

#[derive(Clone)]
struct Mailbox {
    group: String,
    /// `None` once the inbox is closed; the receiver then drains what is queued.
    tx: Option<mpsc::Sender<Message>>,
    rx: Arc<AsyncMutex<mpsc::Receiver<Message>>>,
}

impl Context {
    /// A bus whose inboxes hold `capacity` messages each.
    pub fn new(capacity: usize) -> Self {
        Self::with_shutdown(capacity, CancellationToken::new())
    }

    pub(crate) fn with_shutdown(capacity: usize, shutdown: CancellationToken) -> Self {
        Context {
            shared: Arc::new(Shared {
                registry: ArcSwap::from_pointee(Registry::default()),
                writer: Mutex::new(()),
                pending: Pending::new(),
                lanes: Lanes::default(),
                capacity: capacity.max(1),
                shutdown,
            }),
        }
    }

    fn update_registry(&self, f: impl FnOnce(&mut Registry) -> Result<()>) -> Result<()> {
        let _w = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Registry::clone(&self.shared.registry.load());
        f(&mut next)?;
        self.shared.registry.store(Arc::new(next));
        Ok(())
    }

    /// Gives `module` (of `group`) an inbox. A name whose inbox was closed may be reused.
    pub fn add_module(&self, module: &str, group: &str) -> Result<()> {
        self.update_registry(|reg| {
            if reg.modules.get(module).is_some_and(|m| m.tx.is_some()) {
                return Err(Error::DuplicateModule(module.to_owned()));
            }
            let (tx, rx) = mpsc::channel(self.shared.capacity);
            reg.modules.insert(
                module.to_owned(),
                Mailbox {
                    group: group.to_owned(),
                    tx: Some(tx),
                    rx: Arc::new(AsyncMutex::new(rx)),
                },
            );
            reg.groups
                .entry(group.to_owned())
                .or_default()
                .push(module.to_owned());
            Ok(())
        })
    }

    /// Closes `module`'s inbox and takes it out of its group. Messages already queued can
    /// still be received; after them `receive` reports [`Error::Closed`].
    pub fn cleanup(&self, module: &str) -> Result<()> {
        self.update_registry(|reg| {
            let mailbox = reg
                .modules
                .get_mut(module)
                .ok_or_else(|| Error::UnknownModule(module.to_owned()))?;
            mailbox.tx = None;
            if let Some(members) = reg.groups.get_mut(&mailbox.group) {
                members.retain(|m| m != module);
                if members.is_empty() {
                    let group = mailbox.group.clone();
                    reg.groups.remove(&group);
                }
            }
            Ok(())
        })
    }

    pub(crate) fn close_all(&self) {
        let _ = self.update_registry(|reg| {
            for m in reg.modules.values_mut() {
                m.tx = None;
            }
            reg.groups.clear();
            Ok(())
        });
    }

    /// The sending end of lane `name` carrying `T` (see [`crate::lane`]); the lane is made
    /// on first mention, so a writer may hold it before the reader starts.
    pub fn lane<T: Send + 'static>(
        &self,
        name: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedSender<T>> {
        self.shared.lanes.sender(name)
    }

    /// The receiving end of lane `name`, taken once (by the module that reads it).
    pub fn take_lane<T: Send + 'static>(
        &self,
        name: &str,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<T>> {
        self.shared.lanes.take(name)
    }

    /// Names of the open members of `group`.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.shared
            .registry
            .load()
            .groups
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    /// Names of every group with an open member.
    pub fn groups(&self) -> Vec<String> {
        let reg = self.shared.registry.load();
        let mut groups: Vec<String> = reg
            .groups
            .iter()
            .filter(|(_, members)| !members.is_empty())
            .map(|(group, _)| group.clone())
            .collect();
        groups.sort();
        groups
    }

    fn sender(reg: &Registry, module: &str) -> Result<mpsc::Sender<Message>> {
        match reg.modules.get(module) {
            None => Err(Error::UnknownModule(module.to_owned())),
            Some(Mailbox { tx: None, .. }) => Err(Error::Closed(module.to_owned())),
            Some(Mailbox { tx: Some(tx), .. }) => Ok(tx.clone()),
        }
    }

    /// Queues `msg` for `module` without waiting: a full inbox hands the message back.
    pub fn try_send(&self, module: &str, msg: Message) -> Result<(), TrySendError> {
        let reg = self.shared.registry.load();
        let tx = match reg.modules.get(module) {
            Some(Mailbox { tx: Some(tx), .. }) => tx,
            Some(_) => return Err(try_err(Error::Closed(module.to_owned()), msg)),
            None => return Err(try_err(Error::UnknownModule(module.to_owned()), msg)),
        };
        tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) => try_err(Error::Full(module.to_owned()), m),
            mpsc::error::TrySendError::Closed(m) => try_err(Error::Closed(module.to_owned()), m),
        })
    }

    /// Queues `msg` for `module`, waiting while its inbox is full.
    pub async fn send(&self, module: &str, msg: Message) -> Result<()> {
        // Fast path: no clone of the sender and no await when there is room.
        let msg = match self.try_send(module, msg) {
            Ok(()) => return Ok(()),
            Err(TrySendError {
                error: Error::Full(_),
                message,
            }) => *message,
            Err(e) => return Err(e.error),
        };
        let tx = Self::sender(&self.shared.registry.load(), module)?;
        tx.send(msg)
            .await
            .map_err(|_| Error::Closed(module.to_owned()))
    }

    /// Queues `msg` for `module` from a plain thread, blocking while the inbox is full.
    ///
    /// # Panics
    /// When called from an async task: a task must use [`Context::send`].
    pub fn send_blocking(&self, module: &str, msg: Message) -> Result<()> {
        let tx = Self::sender(&self.shared.registry.load(), module)?;
        tx.blocking_send(msg)
            .map_err(|_| Error::Closed(module.to_owned()))
    }

    /// Queues a copy of `msg` for every open member of `group`, waiting on full inboxes.
    /// Every member is tried; the first failure, if any, is returned afterwards.
    pub async fn send_to_group(&self, group: &str, msg: Message) -> Result<()> {
        let members = self.members(group);
        if members.is_empty() {
            return Err(Error::UnknownGroup(group.to_owned()));
        }
        let mut first_err = None;
        let (last, others) = members.split_last().expect("checked non-empty");
        for member in others {
            if let Err(e) = self.send(member, msg.clone()).await {
                first_err.get_or_insert(e);
            }
        }
        if let Err(e) = self.send(last, msg).await {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    }

    fn receiver(&self, module: &str) -> Result<Arc<AsyncMutex<mpsc::Receiver<Message>>>> {
        self.shared
            .registry
            .load()
            .modules
            .get(module)
            .map(|m| m.rx.clone())
            .ok_or_else(|| Error::UnknownModule(module.to_owned()))
    }

    /// The next message in `module`'s inbox; [`Error::Closed`] once it is closed and drained.
    pub async fn receive(&self, module: &str) -> Result<Message> {
        let rx = self.receiver(module)?;
        let mut rx = rx.lock().await;
        rx.recv()
            .await
            .ok_or_else(|| Error::Closed(module.to_owned()))
    }

    /// Waits for at least one message and moves up to `limit` into `buf`, for modules that
    /// work in batches. Returns how many were added.
    pub async fn receive_many(
        &self,
        module: &str,
        buf: &mut Vec<Message>,
        limit: usize,
    ) -> Result<usize> {
        let rx = self.receiver(module)?;
        let mut rx = rx.lock().await;
        match rx.recv_many(buf, limit.max(1)).await {
            0 => Err(Error::Closed(module.to_owned())),
            n => Ok(n),
        }
    }

    /// [`Context::receive`] for a plain thread.
    ///
    /// # Panics
    /// When called from an async task: a task must use [`Context::receive`].
    pub fn receive_blocking(&self, module: &str) -> Result<Message> {
        let rx = self.receiver(module)?;
        let mut rx = rx.blocking_lock();
        rx.blocking_recv()
            .ok_or_else(|| Error::Closed(module.to_owned()))
    }

    /// Sends `msg` to `module` as a sync request and waits up to `timeout` (queueing
    /// included) for the reply, which the receiver gives with [`Context::send_resp`].
    pub async fn send_sync(
        &self,
        module: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Message> {
        let deadline = Instant::now() + timeout;
        let msg = msg.with_sync(true);
        let (tx, rx) = oneshot::channel();
        // The slot exists before the request is queued, so even an instant reply finds it.
        let _slot = self
            .shared
            .pending
            .register(msg.header.id.clone(), Slot::One(tx))?;
        let exchange = async {
            self.send(module, msg).await?;
            rx.await.map_err(|_| Error::Closed(module.to_owned()))
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| Error::Timeout {
                target: module.to_owned(),
                after: timeout,
            })?
    }

    /// Sends a copy of `msg` to every open member of `group` and collects one reply from
    /// each within `timeout`.
    pub async fn send_to_group_sync(
        &self,
        group: &str,
        msg: Message,
        timeout: Duration,
    ) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let members = self.members(group);
        if members.is_empty() {
            return Err(Error::UnknownGroup(group.to_owned()));
        }
        let expected = members.len();
        let msg = msg.with_sync(true);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _slot = self.shared.pending.register(
            msg.header.id.clone(),
            Slot::Group {
                tx,
                remaining: expected,
            },
        )?;
        let mut replies = Vec::with_capacity(expected);
        let exchange = async {
            for member in &members {
                self.send(member, msg.clone()).await?;
            }
            while replies.len() < expected {
                match rx.recv().await {
                    Some(reply) => replies.push(reply),
                    None => break,
                }
            }
            Ok::<_, Error>(())
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result.map(|()| replies),
            Err(_) => Err(Error::GroupTimeout {
                group: group.to_owned(),
                got: replies.len(),
                expected,
                after: timeout,
            }),
        }
    }

    /// Delivers `reply` to whoever waits on its parent id. It never waits: a reply nobody
    /// waits for (unknown parent, or the requester timed out) is dropped with a debug log.
    /// Returns whether it was delivered.
    pub fn send_resp(&self, reply: Message) -> bool {
        let Some(parent) = reply.header.parent_id.clone() else {
            log::debug!("dropping reply {} without a parent id", reply.header.id);
            return false;
        };
        match self.shared.pending.deliver(&parent, reply) {
            None => true,
            Some(reply) => {
                log::debug!(
                    "dropping reply {} to {parent}: nobody waits for it (unknown or expired)",
                    reply.header.id
                );
                false
            }
        }
    }

    /// Resolves once shutdown has begun.
    pub async fn done(&self) {
        self.shared.shutdown.cancelled().await
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.shared.pending.len()
    }
}

fn try_err(error: Error, message: Message) -> TrySendError {
    TrySendError {
        error,
        message: Box::new(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Content, Route};

    fn req() -> Message {
        Message::new(
            Route::new("t", "g", "query", "default/pod/p"),
            Content::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_slots_are_removed_on_timeout_reply_and_cancel() {
        let ctx = Context::new(4);
        ctx.add_module("m", "g").unwrap();
        let _ = ctx.send_sync("m", req(), Duration::from_millis(10)).await;
        assert_eq!(ctx.pending_len(), 0, "timed-out slot left behind");

        let caller = {
            let ctx = ctx.clone();
            tokio::spawn(async move { ctx.send_sync("m", req(), Duration::from_secs(5)).await })
        };
        let _stale = ctx.receive("m").await.unwrap();
        let live = ctx.receive("m").await.unwrap();
        assert_eq!(ctx.pending_len(), 1);
        caller.abort();
        let _ = caller.await;
        assert_eq!(ctx.pending_len(), 0, "cancelled caller's slot left behind");
        assert!(!ctx.send_resp(Message::reply(&live, "nobody")));
    }

    #[tokio::test]
    async fn a_reused_id_is_refused_while_the_first_waits() {
        let ctx = Context::new(4);
        ctx.add_module("m", "g").unwrap();
        let first = req();
        let copy = first.clone();
        let c2 = ctx.clone();
        let waiting =
            tokio::spawn(async move { c2.send_sync("m", first, Duration::from_secs(5)).await });
        let got = ctx.receive("m").await.unwrap();
        let err = ctx
            .send_sync("m", copy, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateId(_)));
        ctx.send_resp(Message::reply(&got, "ok"));
        assert!(waiting.await.unwrap().is_ok());
    }
}
