//! The IPC server: which peers may connect (this Kamailio's own processes),
//! and one task per connection that reads its requests and writes answers,
//! or, for a consumer worker's link, its work.
use super::*;

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
    let (tx, mut rx) = mpsc::unbounded_channel::<Outbound>();
    // Deliveries written to this connection whose route has not reported
    // yet: returned to the broker if the connection breaks.
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let (stop_writer, mut stopped) = oneshot::channel::<()>();
    let writer_in_flight = in_flight.clone();
    let writer = crate::task::spawn("an IPC connection's writer", async move {
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = &mut stopped => None,
            };
            let Some(item) = item else { break };
            if let OutboundKind::Delivery {
                id,
                needs_ack: true,
            } = item.kind
            {
                lock(&writer_in_flight).insert(id);
            }
            if writer.write_all(&item.frame).await.is_err() {
                // Not written after all.
                if let OutboundKind::Delivery { id, .. } = item.kind {
                    lock(&writer_in_flight).remove(&id);
                }
                rx.close();
                let mut unsent = vec![item];
                while let Ok(item) = rx.try_recv() {
                    unsent.push(item);
                }
                return unsent;
            }
        }
        rx.close();
        let mut unsent = Vec::new();
        while let Ok(item) = rx.try_recv() {
            unsent.push(item);
        }
        unsent
    });
    let mut worker = None;
    loop {
        let message = match read_message(&mut reader).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                log::error!("IPC: {e}");
                break;
            }
        };
        match message {
            Message::Publish(outgoing) => {
                let (shared, tx) = (shared.clone(), tx.clone());
                crate::task::spawn("a publish", async move {
                    let request = outgoing.request;
                    let outcome = shared.answer_publish(outgoing).await;
                    let _ = tx.send(Outbound::answer(Message::Answer { request, outcome }));
                });
            }
            Message::Query(outgoing) => {
                let (shared, tx) = (shared.clone(), tx.clone());
                crate::task::spawn("a query", async move {
                    let request = outgoing.request;
                    let outcome = shared.answer_query(outgoing).await;
                    let _ = tx.send(Outbound::answer(Message::Answer { request, outcome }));
                });
            }
            Message::Status { request } => {
                log::debug!("status requested (RPC)");
                let outcome = Outcome::Reply(shared.status());
                let _ = tx.send(Outbound::answer(Message::Answer { request, outcome }));
            }
            Message::AsyncQuery {
                outgoing,
                hash,
                label,
                ok_route,
                err_route,
            } => {
                let shared = shared.clone();
                crate::task::spawn("an asynchronous query", async move {
                    shared
                        .async_query(outgoing, hash, label, ok_route, err_route)
                        .await;
                });
            }
            Message::Hello { worker: number } => {
                let index = number.saturating_sub(1) as usize;
                let mut workers = lock(&shared.workers);
                if index < workers.links.len() {
                    worker = Some((index, workers.attach(index, tx.clone())));
                } else {
                    log::error!("IPC: unknown consumer worker {number}");
                }
            }
            Message::Ack { delivery } => {
                lock(&in_flight).remove(&delivery);
                if let Some(acker) = lock(&shared.ackers).remove(&delivery) {
                    acker.ack();
                    bump(&shared.counters.acked);
                }
            }
            Message::StartupDone {
                subscriptions,
                publishes,
            } => {
                if shared.startup.try_send((subscriptions, publishes)).is_err() {
                    log::error!("IPC: a start-up report came too late or twice; ignored");
                }
            }
            Message::Answer { .. } | Message::Deliver(_) | Message::Resume(_) => {
                log::error!("IPC: unexpected message from a Kamailio process");
            }
        }
    }
    let Some((index, generation)) = worker else {
        return;
    };
    lock(&shared.workers).detach(index, generation);
    let _ = stop_writer.send(());
    let unsent = writer.await.ok().flatten().unwrap_or_default();
    shared.worker_gone(index, &lock(&in_flight), unsent);
}

pub(super) async fn read_message(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Option<Message>, String> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err("bad frame length".into());
    }
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Message::decode(&body).map(Some).map_err(|e| e.to_string())
}
