//! Published ports of a container on a bridge network (`-p` without a user network): a userland
//! forwarder, as docker-proxy, from a host port to the container's address inside the network's
//! namespace. Each connection to the container is made from a thread that enters the namespace
//! (a socket keeps the namespace it was made in), then relayed on the runtime.

use std::net::{SocketAddr, SocketAddrV4};

use anyhow::Context as _;

/// Connects to `to` from inside network namespace `netns`.
fn connect_in(netns: &str, to: SocketAddrV4) -> anyhow::Result<std::net::TcpStream> {
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("the network namespace {netns} is gone"))?;
    std::thread::spawn(move || -> anyhow::Result<std::net::TcpStream> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("entering the network's namespace")?;
        let s =
            std::net::TcpStream::connect_timeout(&to.into(), std::time::Duration::from_secs(10))
                .with_context(|| format!("connecting to {to}"))?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the connecting thread panicked"))?
}

/// Listens on `listen` and relays each connection to `to` in `netns`, until the runtime ends.
pub async fn publish(listen: SocketAddr, netns: String, to: SocketAddrV4) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("publishing on {listen}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = l.accept().await else {
                continue;
            };
            let netns = netns.clone();
            tokio::spawn(async move {
                let inner = tokio::task::spawn_blocking(move || connect_in(&netns, to)).await;
                let inner = match inner {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!("published port {listen}: {e:#}");
                        return;
                    }
                    Err(_) => return,
                };
                let Ok(mut inner) = tokio::net::TcpStream::from_std(inner) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut inner).await;
            });
        }
    });
    Ok(())
}
