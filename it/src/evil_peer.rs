//! A misbehaving peer for tests: it announces itself as a seeder of a blob, answers every
//! bitfield with "I have everything" and every request with bytes of the right length that
//! fail the piece hash.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use shoal_core::api::AnnounceRequest;
use shoal_core::wire::{self, Message, PROTOCOL_VERSION};
use shoal_core::{MetaInfo, PeerId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct EvilPeer {
    pub addr: SocketAddr,
    /// Corrupt pieces sent.
    pub served: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl EvilPeer {
    /// Listens on `ip:0` and announces itself to `tracker` as a seeder of `meta`'s blob
    /// every 500 ms until dropped.
    pub async fn start(ip: std::net::IpAddr, meta: MetaInfo, tracker: String) -> anyhow::Result<EvilPeer> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let served = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let peer_id = PeerId::random();
        let meta = Arc::new(meta);
        let (s, st, m) = (served.clone(), stop.clone(), meta.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => if let Ok((sock, _)) = r {
                        let (s, m) = (s.clone(), m.clone());
                        tokio::spawn(async move { let _ = serve(sock, peer_id, &m, &s).await; });
                    },
                    _ = st.cancelled() => return,
                }
            }
        });
        let st = stop.clone();
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
            let http = reqwest::Client::new();
            loop {
                let _ = http.post(format!("{tracker}/announce")).json(&req).send().await;
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                    _ = st.cancelled() => return,
                }
            }
        });
        Ok(EvilPeer { addr, served, stop })
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for EvilPeer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(mut sock: TcpStream, peer_id: PeerId, meta: &MetaInfo, served: &AtomicU64) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    wire::encode(&Message::Handshake { version: PROTOCOL_VERSION, peer_id, zone: None }, &mut out);
    sock.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(1 << 16);
    loop {
        while let Some((msg, used)) = wire::decode(&buf)? {
            out.clear();
            match msg {
                Message::Bitfield { blob, num_pieces, .. } => {
                    let bits = wire::pack_bits(num_pieces, |_| true);
                    wire::encode(&Message::Bitfield { blob, num_pieces, bits: &bits }, &mut out);
                }
                Message::Request { blob, piece } => {
                    if let Some(i) = meta.piece(piece) {
                        let junk = vec![0xA5u8; meta.piece_len(i) as usize];
                        wire::encode(&Message::Piece { blob, piece, data: &junk }, &mut out);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
            let _ = buf.split_to(used);
            sock.write_all(&out).await?;
        }
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
