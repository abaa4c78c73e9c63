//! Behaviour of the module bus as modules see it.

use std::time::Duration;

use beehive::{Context, Core, CoreConfig, Error, Module, ModuleError, async_trait};
use proto::{Content, Message, Route};
use serde_json::json;
use tokio::sync::mpsc;

fn msg(source: &str, content: Content) -> Message {
    Message::new(
        Route::new(source, "test", "insert", "default/pod/p"),
        content,
    )
}

fn num(m: &Message) -> u64 {
    m.content.decode::<u64>().expect("numeric content")
}

/// Replies to every request with its own content, in reverse batch order so that a reply
/// matched by position instead of by id would go to the wrong caller.
async fn echo(ctx: Context, module: &'static str) {
    let mut batch = Vec::new();
    while ctx.receive_many(module, &mut batch, 64).await.is_ok() {
        for req in batch.drain(..).rev() {
            let reply = Message::reply(&req, req.content.clone());
            ctx.send_resp(reply);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_one_sender_arrive_in_order() {
    let ctx = Context::new(16);
    ctx.add_module("sink", "g").unwrap();
    let mut producers = Vec::new();
    for p in 0..4 {
        let ctx = ctx.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..5_000u64 {
                ctx.send("sink", msg(&format!("p{p}"), json!(i).into()))
                    .await
                    .unwrap();
            }
        }));
    }
    let mut next = [0u64; 4];
    for _ in 0..20_000 {
        let m = ctx.receive("sink").await.unwrap();
        let p: usize = m.route.source[1..].parse().unwrap();
        assert_eq!(num(&m), next[p], "out of order from p{p}");
        next[p] += 1;
    }
    for p in producers {
        p.await.unwrap();
    }
    assert_eq!(next, [5_000; 4]);
}

#[tokio::test]
async fn sync_round_trip_returns_the_reply_to_the_caller() {
    let ctx = Context::new(8);
    ctx.add_module("echo", "g").unwrap();
    tokio::spawn(echo(ctx.clone(), "echo"));
    let req = msg("caller", Content::text("hello"));
    let id = req.id().clone();
    let reply = ctx
        .send_sync("echo", req, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.parent_id(), Some(&id));
    assert_eq!(reply.content.as_str(), Some("hello"));
}

#[tokio::test]
async fn the_request_arrives_marked_sync() {
    let ctx = Context::new(8);
    ctx.add_module("m", "g").unwrap();
    let ctx2 = ctx.clone();
    let caller = tokio::spawn(async move {
        ctx2.send_sync("m", msg("c", Content::default()), Duration::from_secs(5))
            .await
    });
    let req = ctx.receive("m").await.unwrap();
    assert!(req.header.sync);
    assert!(ctx.send_resp(Message::reply(&req, "ok")));
    assert!(caller.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn sync_call_times_out_and_a_late_reply_is_dropped() {
    let ctx = Context::new(8);
    ctx.add_module("mute", "g").unwrap();
    let err = ctx
        .send_sync(
            "mute",
            msg("c", Content::default()),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { ref target, .. } if target == "mute"),
        "{err}"
    );
    // The request was queued; replying now finds nobody and does not block.
    let req = ctx.receive("mute").await.unwrap();
    assert!(!ctx.send_resp(Message::reply(&req, "late")));
}

#[tokio::test(start_paused = true)]
async fn timeout_covers_a_full_inbox_too() {
    let ctx = Context::new(1);
    ctx.add_module("busy", "g").unwrap();
    ctx.try_send("busy", msg("c", Content::default())).unwrap();
    let err = ctx
        .send_sync(
            "busy",
            msg("c", Content::default()),
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
}

#[tokio::test(start_paused = true)]
async fn group_sync_collects_every_reply_or_reports_who_was_missing() {
    let ctx = Context::new(8);
    for m in ["fast1", "fast2", "slow"] {
        ctx.add_module(m, "workers").unwrap();
    }
    ctx.add_module("other", "elsewhere").unwrap();
    tokio::spawn(echo(ctx.clone(), "fast1"));
    tokio::spawn(echo(ctx.clone(), "fast2"));
    let slow = ctx.clone();
    tokio::spawn(async move {
        while let Ok(req) = slow.receive("slow").await {
            tokio::time::sleep(Duration::from_millis(500)).await;
            slow.send_resp(Message::reply(&req, "slow"));
        }
    });

    let replies = ctx
        .send_to_group_sync("workers", msg("c", "q".into()), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(replies.len(), 3);
    assert!(replies.iter().any(|r| r.content.as_str() == Some("slow")));

    let err = ctx
        .send_to_group_sync("workers", msg("c", "q".into()), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::GroupTimeout {
                got: 2,
                expected: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        ctx.send_to_group_sync("nobody", msg("c", "q".into()), Duration::from_secs(1))
            .await,
        Err(Error::UnknownGroup(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sync_calls_each_get_their_own_reply() {
    let ctx = Context::new(64);
    ctx.add_module("echo", "g").unwrap();
    tokio::spawn(echo(ctx.clone(), "echo"));
    let mut calls = Vec::new();
    for i in 0..1_000u64 {
        let ctx = ctx.clone();
        calls.push(tokio::spawn(async move {
            let reply = ctx
                .send_sync("echo", msg("c", json!(i).into()), Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(num(&reply), i, "caller {i} got someone else's reply");
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_inbox_pushes_back_and_loses_nothing() {
    let ctx = Context::new(4);
    ctx.add_module("slow", "g").unwrap();
    for i in 0..4u64 {
        ctx.try_send("slow", msg("c", json!(i).into())).unwrap();
    }
    let refused = ctx
        .try_send("slow", msg("c", json!(4u64).into()))
        .unwrap_err();
    assert!(matches!(refused.error, Error::Full(_)));
    assert_eq!(
        num(&refused.message),
        4,
        "the refused message comes back intact"
    );

    let sender = ctx.clone();
    let mut blocked =
        tokio::spawn(async move { sender.send("slow", msg("c", json!(4u64).into())).await });
    // Nothing can free a slot, so the waiting send is still pending when a long time passed.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut blocked)
            .await
            .is_err()
    );
    assert_eq!(num(&ctx.receive("slow").await.unwrap()), 0);
    blocked.await.unwrap().unwrap();
    for want in 1..=4u64 {
        assert_eq!(num(&ctx.receive("slow").await.unwrap()), want);
    }
}

#[tokio::test]
async fn unknown_and_closed_modules_are_typed_errors() {
    let ctx = Context::new(4);
    assert!(matches!(
        ctx.send("ghost", msg("c", Content::default())).await,
        Err(Error::UnknownModule(_))
    ));
    ctx.add_module("m", "g").unwrap();
    assert!(matches!(
        ctx.add_module("m", "g"),
        Err(Error::DuplicateModule(_))
    ));
    ctx.send("m", msg("c", "queued".into())).await.unwrap();
    ctx.cleanup("m").unwrap();
    assert!(matches!(
        ctx.send("m", msg("c", Content::default())).await,
        Err(Error::Closed(_))
    ));
    // What was queued before the cleanup is still delivered, then the inbox reports closed.
    assert_eq!(
        ctx.receive("m").await.unwrap().content.as_str(),
        Some("queued")
    );
    assert!(matches!(ctx.receive("m").await, Err(Error::Closed(_))));
    assert!(ctx.members("g").is_empty());
    // The name can be used again.
    ctx.add_module("m", "g").unwrap();
}

#[tokio::test]
async fn send_to_group_reaches_every_member() {
    let ctx = Context::new(4);
    for m in ["a", "b", "c"] {
        ctx.add_module(m, "edge").unwrap();
    }
    ctx.add_module("x", "cloud").unwrap();
    ctx.send_to_group("edge", msg("s", "hi".into()))
        .await
        .unwrap();
    for m in ["a", "b", "c"] {
        assert_eq!(ctx.receive(m).await.unwrap().content.as_str(), Some("hi"));
    }
    assert!(ctx.try_send("x", msg("s", "only".into())).is_ok());
    assert_eq!(
        ctx.receive("x").await.unwrap().content.as_str(),
        Some("only")
    );
}

#[test]
fn plain_threads_send_and_receive_blocking() {
    let ctx = Context::new(2);
    ctx.add_module("worker", "g").unwrap();
    let producer = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            for i in 0..100u64 {
                ctx.send_blocking("worker", msg("t", json!(i).into()))
                    .unwrap();
            }
        })
    };
    for i in 0..100u64 {
        assert_eq!(num(&ctx.receive_blocking("worker").unwrap()), i);
    }
    producer.join().unwrap();
}

struct Worker {
    name: &'static str,
    seen: mpsc::UnboundedSender<u64>,
}

#[async_trait]
impl Module for Worker {
    fn name(&self) -> &str {
        self.name
    }
    fn group(&self) -> &str {
        "workers"
    }
    async fn start(self: Box<Self>, ctx: Context) -> Result<(), ModuleError> {
        // Drains its inbox until the core closes it.
        while let Ok(m) = ctx.receive(self.name).await {
            let _ = self.seen.send(num(&m));
        }
        Ok(())
    }
}

struct Stubborn;

#[async_trait]
impl Module for Stubborn {
    fn name(&self) -> &str {
        "stubborn"
    }
    fn group(&self) -> &str {
        "workers"
    }
    async fn start(self: Box<Self>, _ctx: Context) -> Result<(), ModuleError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

struct Failing;

#[async_trait]
impl Module for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn group(&self) -> &str {
        "workers"
    }
    async fn start(self: Box<Self>, _ctx: Context) -> Result<(), ModuleError> {
        Err("database is gone".into())
    }
}

struct Disabled;

#[async_trait]
impl Module for Disabled {
    fn name(&self) -> &str {
        "disabled"
    }
    fn group(&self) -> &str {
        "workers"
    }
    fn enabled(&self) -> bool {
        false
    }
    async fn start(self: Box<Self>, _ctx: Context) -> Result<(), ModuleError> {
        panic!("a disabled module must not start");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_modules_drains_inboxes_and_reports_stragglers() {
    let mut core = Core::new(CoreConfig {
        grace_period_ms: 1_000,
        ..CoreConfig::default()
    })
    .unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    core.register(Box::new(Worker {
        name: "worker",
        seen: seen_tx,
    }))
    .unwrap();
    core.register(Box::new(Stubborn)).unwrap();
    core.register(Box::new(Failing)).unwrap();
    core.register(Box::new(Disabled)).unwrap();
    let ctx = core.context();
    assert!(matches!(
        ctx.try_send("disabled", msg("t", Content::default())),
        Err(e) if matches!(e.error, Error::UnknownModule(_))
    ));
    // Queued before the module even starts: inboxes exist from registration.
    for i in 0..3u64 {
        ctx.try_send("worker", msg("t", json!(i).into())).unwrap();
    }
    let handle = core.shutdown_handle();
    let run = tokio::spawn(core.run_until(std::future::pending()));
    assert_eq!(seen_rx.recv().await, Some(0));
    handle.shutdown();
    let report = run.await.unwrap();

    assert_eq!(report.stopped, vec!["worker".to_string()]);
    assert_eq!(report.abandoned, vec!["stubborn".to_string()]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, "failing");
    assert!(report.failed[0].1.contains("database is gone"));
    let mut rest = Vec::new();
    while let Some(i) = seen_rx.recv().await {
        rest.push(i);
    }
    assert_eq!(rest, vec![1, 2], "queued messages are drained, not dropped");
    assert!(ctx.is_shutting_down());
}

#[tokio::test]
async fn run_until_returns_when_the_stop_future_resolves() {
    let mut core = Core::new(CoreConfig::default()).unwrap();
    let (seen_tx, _seen_rx) = mpsc::unbounded_channel();
    core.register(Box::new(Worker {
        name: "w",
        seen: seen_tx,
    }))
    .unwrap();
    let ctx = core.context();
    let report = core.run_until(async {}).await;
    assert_eq!(report.stopped, vec!["w".to_string()]);
    assert!(report.abandoned.is_empty());
    ctx.done().await;
}

#[test]
fn bad_config_is_refused() {
    let err = Core::new(CoreConfig {
        inbox_capacity: 0,
        ..CoreConfig::default()
    })
    .err()
    .unwrap();
    assert!(matches!(
        err,
        Error::InvalidConfig {
            field: "inboxCapacity",
            ..
        }
    ));
}
