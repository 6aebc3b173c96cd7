//! The IPC server: which peers may connect (this Kamailio's own processes),
//! and one task per connection that reads its requests and writes answers,
//! or, for a consumer worker's link, its work.
use super::*;

/// A worker link's writer gathers frames into one write up to this size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Whether an IPC peer is a process of this Kamailio: the AMQP process's
/// parent is Kamailio's main process.
pub(super) fn trusted(stream: &UnixStream, own_uid: u32) -> Result<(), String> {
    let peer = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    crate::ipc::trusted_peer(
        peer.uid(),
        peer.pid(),
        own_uid,
        std::os::unix::process::parent_id(),
    )
}

/// This process's effective uid, as the kernel gives it to a peer (the
/// owner of `/proc/self` is root when the process is not dumpable, e.g.
/// after Kamailio's `-u`, and some chroots have no `/proc`).
pub(super) fn own_euid() -> std::io::Result<u32> {
    let (ours, _theirs) = UnixStream::pair()?;
    Ok(ours.peer_cred()?.uid())
}

pub(super) async fn accept(listener: Arc<tokio::net::UnixListener>, shared: Arc<Shared>) {
    let own_uid = match own_euid() {
        Ok(uid) => uid,
        Err(e) => {
            log::error!("IPC: cannot learn this process's uid ({e}); refusing every connection");
            u32::MAX
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                if let Err(reason) = trusted(&stream, own_uid) {
                    bump(&shared.counters.ipc_refused);
                    log::error!("refused an IPC connection: {reason}");
                    continue;
                }
                crate::task::spawn("an IPC connection", connection(shared.clone(), stream));
            }
            Err(e) => {
                log::error!("IPC accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one IPC connection: requests from a process, or a worker's link.
pub(super) async fn connection(shared: Arc<Shared>, stream: UnixStream) {
    let (reader, mut writer) = stream.into_split();
    // Buffered: a frame's length and body come in one read.
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, reader);
    // Answers to this connection's requests, as frames.
    let (answers, mut answers_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    // Set once the peer says it is a consumer worker: its lane, and this
    // link's generation there.
    let lane: Arc<OnceLock<(usize, u64)>> = Arc::default();
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop_writer, mut stopped) = oneshot::channel::<()>();
    let writer = {
        let (shared, lane, wake) = (shared.clone(), lane.clone(), wake.clone());
        crate::task::spawn("an IPC connection's writer", async move {
            loop {
                if let Some(&(index, generation)) = lane.get() {
                    // Everything the lane lets go now, in one write.
                    let mut batch = Vec::new();
                    let mut bytes = Vec::new();
                    loop {
                        let next = lock(&shared.lanes).next(index, generation);
                        let Some(next) = next else { break };
                        // Copied: a resume's frame goes to another worker
                        // if this write fails.
                        bytes.extend_from_slice(&next.frame);
                        batch.push(next);
                        if bytes.len() >= WRITE_BATCH_BYTES {
                            break;
                        }
                    }
                    if !batch.is_empty() {
                        if writer.write_all(&bytes).await.is_err() {
                            for next in batch {
                                shared.unwritten(index, generation, next);
                            }
                            return;
                        }
                        for next in batch {
                            if let Some(acker) = next.on_written {
                                acker.ack();
                                bump(&shared.counters.acked);
                            }
                        }
                        // More may be let go now: go round again.
                        continue;
                    }
                }
                tokio::select! {
                    biased;
                    _ = &mut stopped => return,
                    frame = answers_rx.recv() => {
                        let Some(frame) = frame else { return };
                        if writer.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                    _ = wake.notified() => {}
                }
            }
        })
    };
    let answer = |request: u64, outcome: Outcome| Answer { request, outcome }.encode();
    loop {
        let (id, request) = match read_request(&mut reader).await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(e) => {
                log::error!("IPC: {e}");
                break;
            }
        };
        match request {
            Request::Publish(outgoing) => {
                let (shared, tx) = (shared.clone(), answers.clone());
                crate::task::spawn("a publish", async move {
                    let outcome = shared.answer_publish(outgoing).await;
                    let _ = tx.send(answer(id, outcome));
                });
            }
            Request::Query(outgoing) => {
                let (shared, tx) = (shared.clone(), answers.clone());
                crate::task::spawn("a query", async move {
                    let outcome = shared.answer_query(outgoing).await;
                    let _ = tx.send(answer(id, outcome));
                });
            }
            Request::Status => {
                log::debug!("status requested (RPC)");
                let outcome = Outcome::Reply(shared.status());
                let _ = answers.send(answer(id, outcome));
            }
            Request::AsyncQuery { outgoing, resume } => {
                let shared = shared.clone();
                crate::task::spawn("an asynchronous query", async move {
                    shared.async_query(outgoing, resume).await;
                });
            }
            Request::Hello { worker: number } => {
                let index = number.saturating_sub(1) as usize;
                let attached = {
                    let mut lanes = lock(&shared.lanes);
                    (index < lanes.workers() && lane.get().is_none())
                        .then(|| lanes.attach(index, wake.clone()))
                };
                let Some((generation, unreported)) = attached else {
                    log::error!("IPC: unknown consumer worker {number}, or a second hello");
                    break;
                };
                let _ = lane.set((index, generation));
                if !unreported.is_empty() {
                    // The worker's previous link broke unnoticed so far.
                    shared.worker_gone(index, unreported, Vec::new());
                }
                wake.notify_one();
            }
            Request::Ack { delivery } => {
                if let Some(&(index, generation)) = lane.get() {
                    let owed = lock(&shared.lanes).reported(index, generation, delivery);
                    for acker in owed {
                        acker.ack();
                        bump(&shared.counters.acked);
                    }
                }
            }
            Request::LateReply { routing_key, body } => shared.late_reply(routing_key, body),
            Request::SubscriptionState {
                index,
                broker_id,
                failure,
            } => shared.subscription_state(index as usize, broker_id, failure),
            Request::StartupDone {
                subscriptions,
                publishes,
            } => {
                if shared.startup.try_send((subscriptions, publishes)).is_err() {
                    log::error!("IPC: a start-up report came too late or twice; ignored");
                }
            }
        }
    }
    let _ = stop_writer.send(());
    let _ = writer.await;
    let Some(&(index, generation)) = lane.get() else {
        return;
    };
    let (unreported, resumes) = lock(&shared.lanes).detach(index, generation);
    shared.worker_gone(index, unreported, resumes);
}

/// The next request and its id; `None` when the peer closed the connection.
pub(super) async fn read_request(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<(u64, Request)>, String> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = crate::ipc::wire::body_len(len).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Request::decode(&body).map(Some).map_err(|e| e.to_string())
}
