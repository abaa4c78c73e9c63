//! Lanes: unbounded in-process channels between modules, by name, for data that must not
//! wait in a bounded inbox, such as stream frames whose volume the stream protocol itself
//! bounds with credit. A lane's sender exists from its first mention by either end, so the
//! writer need not wait for the reader to start; the reader takes the receiver once.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};

use crate::error::{Error, Result};

struct Slot {
    /// An `UnboundedSender<T>`.
    tx: Box<dyn Any + Send + Sync>,
    /// The `UnboundedReceiver<T>` until taken.
    rx: Option<Box<dyn Any + Send + Sync>>,
}

/// Every lane of a bus.
#[derive(Default)]
pub(crate) struct Lanes {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Lanes {
    fn with_slot<T: Send + 'static, R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Slot) -> Result<R>,
    ) -> Result<R> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(name.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel::<T>();
            Slot {
                tx: Box::new(tx),
                rx: Some(Box::new(rx)),
            }
        });
        if !slot.tx.is::<UnboundedSender<T>>() {
            return Err(Error::LaneType(name.to_owned()));
        }
        f(slot)
    }

    pub(crate) fn sender<T: Send + 'static>(&self, name: &str) -> Result<UnboundedSender<T>> {
        self.with_slot::<T, _>(name, |slot| {
            Ok(slot
                .tx
                .downcast_ref::<UnboundedSender<T>>()
                .expect("type checked")
                .clone())
        })
    }

    pub(crate) fn take<T: Send + 'static>(&self, name: &str) -> Result<UnboundedReceiver<T>> {
        self.with_slot::<T, _>(name, |slot| {
            let rx = slot
                .rx
                .take()
                .ok_or_else(|| Error::LaneTaken(name.to_owned()))?;
            Ok(*rx.downcast::<UnboundedReceiver<T>>().expect("type checked"))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{Context, Error};

    #[tokio::test]
    async fn a_lane_carries_before_and_after_its_reader_takes_it() {
        let ctx = Context::new(4);
        let tx = ctx.lane::<u32>("l").unwrap();
        tx.send(1).unwrap();
        let mut rx = ctx.take_lane::<u32>("l").unwrap();
        ctx.lane::<u32>("l").unwrap().send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert!(matches!(
            ctx.take_lane::<u32>("l"),
            Err(Error::LaneTaken(_))
        ));
        assert!(matches!(ctx.lane::<String>("l"), Err(Error::LaneType(_))));
    }
}
