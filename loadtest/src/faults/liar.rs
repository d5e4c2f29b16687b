//! Adversarial peers for the fault matrix: small nodes that speak the wire protocol
//! (`shoal_core::wire`), announce themselves to the tracker as seeders of a blob, answer every
//! bitfield with "I have every piece", and then misbehave on the first request:
//!
//! - [`Lie::Corrupt`]: answers with a piece of the right length whose bytes fail the hash;
//! - [`Lie::Stall`]: sends a piece's header and half its bytes, then nothing, holding the
//!   connection open;
//! - [`Lie::Garbage`]: sends a frame of an unknown type with random bytes.
//!
//! Each counts the connections it was offered (by remote address) and the ones the other side
//! closed, so a run can tell whether the agents dropped it and then stayed away (blacklisted).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use shoal_core::api::AnnounceRequest;
use shoal_core::wire::{self, Message, PROTOCOL_VERSION};
use shoal_core::{MetaInfo, PeerId};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How a liar misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    Corrupt,
    Stall,
    Garbage,
}

impl Lie {
    pub fn name(self) -> &'static str {
        match self {
            Lie::Corrupt => "corrupt pieces",
            Lie::Stall => "stalls mid-piece",
            Lie::Garbage => "garbage frames",
        }
    }
}

/// What a liar saw.
#[derive(Clone, Debug, Default)]
pub struct LiarStats {
    /// Connections, by the peer id the remote's handshake named (agents dial from whatever
    /// source address the kernel picks, so the address does not tell them apart).
    pub connections: HashMap<PeerId, u32>,
    /// Connections accepted.
    pub accepted: u32,
    /// Connections the remote closed (or reset).
    pub dropped: u32,
    /// Requests that got a lie.
    pub lies: u32,
}

impl LiarStats {
    /// The most connections one remote opened.
    pub fn max_per_peer(&self) -> u32 {
        self.connections.values().copied().max().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.accepted
    }
}

pub struct Liar {
    pub lie: Lie,
    pub addr: SocketAddr,
    stats: Arc<Mutex<LiarStats>>,
    stop: CancellationToken,
}

impl Liar {
    /// Listens on `ip:0` and announces itself to every tracker in `trackers` as a seeder of
    /// `meta`'s blob every 500 ms until dropped.
    pub async fn start(lie: Lie, ip: IpAddr, meta: MetaInfo, trackers: Vec<String>) -> anyhow::Result<Liar> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Mutex::new(LiarStats::default()));
        let stop = CancellationToken::new();
        let peer_id = PeerId::random();
        let meta = Arc::new(meta);
        let (st, s, m) = (stats.clone(), stop.clone(), meta.clone());
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                    () = s.cancelled() => return,
                };
                lock(&st).accepted += 1;
                let (st, s, m) = (st.clone(), s.clone(), m.clone());
                tokio::spawn(async move {
                    // However it ends (end of stream, a reset, a write to a closed socket), a
                    // connection that ends before the liar stops was closed by the remote.
                    let closed = tokio::select! {
                        _ = serve(sock, lie, peer_id, &m, &st) => true,
                        () = s.cancelled() => false,
                    };
                    if closed {
                        lock(&st).dropped += 1;
                    }
                });
            }
        });
        let s = stop.clone();
        let req = AnnounceRequest {
            blob: meta.digest(),
            peer_id,
            addr,
            complete: true,
            origin: false,
            stopped: false,
            zone: None,
        };
        tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap_or_default();
            loop {
                for t in &trackers {
                    let _ = http.post(format!("{t}/announce")).json(&req).send().await;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    () = s.cancelled() => return,
                }
            }
        });
        Ok(Liar { lie, addr, stats, stop })
    }

    pub fn stats(&self) -> LiarStats {
        lock(&self.stats).clone()
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock(m: &Mutex<LiarStats>) -> std::sync::MutexGuard<'_, LiarStats> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection, until the remote closes it (or an I/O error says it did).
async fn serve(
    mut sock: TcpStream,
    lie: Lie,
    peer_id: PeerId,
    meta: &MetaInfo,
    stats: &Mutex<LiarStats>,
) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id, zone: None }, &mut out);
    sock.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1 << 16);
    let mut stalled = false;
    loop {
        // A frame the liar cannot decode is the remote's; it only reads on.
        while let Ok(Some((msg, used))) = wire::decode(&buf) {
            out.clear();
            match msg {
                Message::Handshake { peer_id: theirs, .. } => {
                    *lock(stats).connections.entry(theirs).or_default() += 1;
                }
                Message::Bitfield { blob, num_pieces, .. } => {
                    let bits = wire::pack_bits(num_pieces, |_| true);
                    wire::encode(&Message::Bitfield { blob, num_pieces, bits: &bits }, &mut out);
                }
                Message::Request { blob, piece } if !stalled => {
                    if let Some(i) = meta.piece(piece) {
                        lock(stats).lies += 1;
                        let len = meta.piece_len(i) as usize;
                        match lie {
                            Lie::Corrupt => {
                                let junk = vec![0xA5u8; len];
                                wire::encode(&Message::Piece { blob, piece, data: &junk }, &mut out);
                            }
                            Lie::Stall => {
                                let data = vec![0u8; len];
                                wire::encode(&Message::Piece { blob, piece, data: &data }, &mut out);
                                // The header and half the bytes; the rest never comes.
                                out.truncate(out.len() - len / 2);
                                stalled = true;
                            }
                            Lie::Garbage => {
                                out.extend_from_slice(&[0, 0, 0, 9, 0xEE]);
                                out.extend_from_slice(&rand::random::<[u8; 8]>());
                            }
                        }
                    }
                }
                _ => {}
            }
            let _ = buf.split_to(used);
            sock.write_all(&out).await?;
        }
        match sock.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        if buf.len() > wire::MAX_FRAME_LEN * 2 {
            buf.clear();
        }
    }
}
