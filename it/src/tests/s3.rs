//! Agents pull a blob that lives in a real S3 server (s3s-fs on 127.0.0.1) through an origin
//! whose backend is that S3.

use std::time::Duration;

use shoal_core::Digest;
use shoal_loadtest::cluster::{Cluster, mib, random_blob};
use shoal_loadtest::pull::pull_all;
use shoal_loadtest::s3::S3Server;
use shoal_origin::backend::BackendConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_pull_a_blob_stored_in_real_s3() {
    let s3 = S3Server::start(&["blobs"]).unwrap();
    let backend: BackendConfig =
        shoal_runtime::config::parse(&s3.backend_yaml("blobs", "layout: flat\nprefix: shoal")).unwrap();
    // Put the blob with a real S3 PUT through the backend.
    let data = random_blob(mib(12), 5);
    let d = Digest::of(&data);
    let staged = tempfile_with(&data);
    backend.build().await.unwrap().put(&d, &staged, data.len() as u64).await.unwrap();
    assert!(s3.data.join("blobs/shoal/sha256").join(d.hex()).is_file(), "object is not where the flat layout puts it");

    let c = Cluster::builder().agents(3).backend(backend).start().await.unwrap();
    let pulls = pull_all(&c, d, Duration::from_secs(120)).await.unwrap();
    for p in &pulls {
        assert!(p.verified && p.bytes == data.len() as u64, "agent {}", p.agent);
    }
    // A blob the bucket lacks is a clean 404.
    let missing = Digest::of(b"not in the bucket");
    let url = format!("http://{}/blobs/{missing}", c.agent(0).http_addr);
    assert_eq!(reqwest::get(url).await.unwrap().status(), 404);
    c.shutdown().await;
}

fn tempfile_with(data: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("shoal-it-{}", Digest::of(data).hex()));
    std::fs::write(&p, data).unwrap();
    p
}
