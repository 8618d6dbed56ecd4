//! `--auth` with `--cluster`: authenticated names are reserved on every node, shared by
//! the connections of their `sub` on any node, and freed within the lease after the last
//! of them leaves or its node dies. Real nats-server and ringcast processes, as in
//! tests/cluster.rs (without nats-server these tests fail, naming the package, unless
//! `RINGCAST_SKIP_PEERS=1`); tokens minted as `ringcast token` mints them.

mod common;

use common::{Client, Server, TIMEOUT};
use ringcast_server::jwt::{mint, TokenSpec};
use ringcast_testkit::{poll, NatsServer};
use std::path::{Path, PathBuf};
use std::time::Duration;

backend_tests!(
    an_authenticated_name_is_reserved_on_every_node_and_shared_by_its_sub,
    an_authenticated_name_is_freed_within_the_lease_after_its_last_connection_or_node,
);

/// Short, so that expiry is tested in seconds.
const LEASE: &str = "2s";
const SECRET: &str = "cluster-secret";

fn key_file(test: &str, backend: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ringcast-cluster-auth-{test}-{backend}-{}.key",
        std::process::id()
    ));
    std::fs::write(&path, format!("{SECRET}\n")).expect("writing the key file");
    path
}

fn node(backend: &str, nats: &NatsServer, name: &str, key: &Path) -> Server {
    let key = key.to_str().expect("a UTF-8 temp path");
    let url = nats.url();
    let flags = ["--cluster", &url, "--node", name, "--cluster-lease", LEASE];
    let auth = ["--auth", "optional", "--jwt-key", key];
    Server::start(backend, &[&flags[..], &auth[..]].concat())
}

fn token(sub: &str) -> String {
    let spec = TokenSpec {
        sub: sub.to_owned(),
        ttl: Duration::from_secs(600),
        ..TokenSpec::default()
    };
    mint(&spec, SECRET.as_bytes()).expect("minting a token")
}

/// A client of `server` authenticated as `sub`.
async fn authenticated(server: &Server, sub: &str) -> Client {
    let mut client = Client::connect(server.addr).await;
    let reply = client.ask(&format!("/auth {}", token(sub))).await;
    assert_eq!(reply, format!("* you are {sub}"));
    client
}

/// Asks `/nick NAME` until it is granted (the name expires in the cluster's own time).
async fn nick_once_free(client: &mut Client, name: &str) {
    poll::Wait::new(format!("{name} to be free in the cluster"), TIMEOUT)
        .every(Duration::from_millis(200))
        .until_async(async || match client.ask(&format!("/nick {name}")).await {
            reply if reply == format!("* you are {name}") => Ok(()),
            reply => Err(reply),
        })
        .await;
}

async fn an_authenticated_name_is_reserved_on_every_node_and_shared_by_its_sub(backend: &str) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let key = key_file("reserved", backend);
    let (a, b) = (
        node(backend, &nats, "a", &key),
        node(backend, &nats, "b", &key),
    );
    // The welcome comes once the cluster granted the name: no waiting after it.
    let mut ann = authenticated(&a, "ann").await;
    let mut guest = Client::connect(b.addr).await;
    assert_eq!(guest.ask("/nick ann").await, "* error: name ann is taken");
    // The same sub on another node shares the name; each connection is a member.
    let mut phone = authenticated(&b, "ann").await;
    ann.send("from a").await;
    assert_eq!(phone.line().await, "ann: from a");
    assert_eq!(guest.line().await, "ann: from a");
    phone.send("from b").await;
    assert_eq!(ann.line().await, "ann: from b");
    assert_eq!(guest.line().await, "ann: from b");
    // Listed once across the nodes.
    let who = guest.ask("/who").await;
    assert_eq!(who.matches("ann").count(), 1, "{who}");
    // A guest's name is no token's, on another node either.
    assert_eq!(guest.ask("/nick bob").await, "* you are bob");
    let mut other = Client::connect(a.addr).await;
    let reply = other.ask(&format!("/auth {}", token("bob"))).await;
    assert_eq!(reply, "* error: name bob is taken");
}

async fn an_authenticated_name_is_freed_within_the_lease_after_its_last_connection_or_node(
    backend: &str,
) {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let key = key_file("freed", backend);
    let (a, b) = (
        node(backend, &nats, "a", &key),
        node(backend, &nats, "b", &key),
    );
    let ann = authenticated(&a, "ann").await;
    let phone = authenticated(&b, "ann").await;
    let mut guest = Client::connect(b.addr).await;
    // Node b still has one of ann's connections after a's is gone.
    drop(ann);
    assert_eq!(guest.ask("/nick ann").await, "* error: name ann is taken");
    let mut far = Client::connect(a.addr).await;
    // Node a refreshed the name until its connection left; node b still does.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(far.ask("/nick ann").await, "* error: name ann is taken");
    drop(phone);
    nick_once_free(&mut far, "ann").await;

    // A node that dies takes its sub's name with it, within the lease.
    let mut c = node(backend, &nats, "c", &key);
    let cat = authenticated(&c, "cat").await;
    assert_eq!(guest.ask("/nick cat").await, "* error: name cat is taken");
    c.signal(libc::SIGKILL);
    c.wait_exit();
    drop(cat);
    nick_once_free(&mut guest, "cat").await;
}
