//! The key exchange (RFC 4253 §7-8, curve25519-sha256, strict KEX): KEXINIT, the ECDH messages
//! of either role, NEWKEYS and the keys that follow, the first exchange and rekeys.

use super::*;

impl<H: Handler> Conn<H> {
    pub(super) async fn kex_packet(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let number = payload[0];
        let state = std::mem::replace(&mut self.kex, KexState::Idle);
        match (number, state) {
            (msg::KEXINIT, state @ (KexState::Idle | KexState::SentInit { .. })) => {
                let ours = match state {
                    KexState::SentInit { ours } => ours,
                    _ => {
                        // The peer starts a rekey: answer with ours first.
                        self.send_kexinit().await?;
                        match std::mem::replace(&mut self.kex, KexState::Idle) {
                            KexState::SentInit { ours } => ours,
                            _ => unreachable!("send_kexinit sets SentInit"),
                        }
                    }
                };
                let theirs_parsed = KexInit::parse(&payload)?;
                let ours_parsed = KexInit::parse(&ours)?;
                let server = self.is_server();
                let (c, s) = if server {
                    (&theirs_parsed, &ours_parsed)
                } else {
                    (&ours_parsed, &theirs_parsed)
                };
                let agreed = kex::negotiate(c, s, !server)?;
                if self.first_kex {
                    self.strict = agreed.strict;
                    self.peer_ext_info = agreed.ext_info_c;
                }
                let ignore_next = agreed.ignore_guess;
                let mut ephemeral = None;
                if !server {
                    let e = Ephemeral::new();
                    let mut w = Writer::msg(msg::KEX_ECDH_INIT);
                    w.string(e.public);
                    self.send(w.finish()).await?;
                    ephemeral = Some(e);
                }
                self.kex = KexState::Exchanging {
                    ours,
                    theirs: payload,
                    agreed: Box::new(agreed),
                    ephemeral,
                    ignore_next,
                };
                Ok(())
            }
            (
                _,
                KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ephemeral,
                    ignore_next: true,
                },
            ) if number != msg::NEWKEYS => {
                // The peer's wrong guess (first_kex_packet_follows): dropped.
                self.kex = KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ephemeral,
                    ignore_next: false,
                };
                Ok(())
            }
            (
                msg::KEX_ECDH_INIT,
                KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ..
                },
            ) if self.is_server() => self.server_ecdh(&payload, ours, theirs, agreed).await,
            (
                msg::KEX_ECDH_REPLY,
                KexState::Exchanging {
                    ours,
                    theirs,
                    agreed,
                    ephemeral: Some(e),
                    ..
                },
            ) if !self.is_server() => self.client_ecdh(&payload, ours, theirs, agreed, e).await,
            (msg::NEWKEYS, KexState::AwaitNewKeys) => {
                let first = self.first_kex;
                self.first_kex = false;
                self.kex = KexState::Idle;
                if first {
                    self.after_first_kex().await?;
                }
                Ok(())
            }
            (n, _) => Err(protocol(format!("unexpected key exchange message {n}"))),
        }
    }

    /// Derives both directions' keys and sends NEWKEYS; the writer switches right after it, the
    /// reader after the peer's.
    pub(super) async fn finish_kex(
        &mut self,
        agreed: &Agreed,
        shared: &[u8],
        h: &[u8],
    ) -> Result<(), SshError> {
        let sid = self.session_id.get_or_insert_with(|| h.to_vec()).clone();
        let make = |cipher: &str, mac: &str, iv: u8, key: u8, mk: u8| {
            let (kl, il) = cipher::key_lengths(cipher);
            let ml = cipher::mac_key_length(mac);
            Direction::new(
                cipher,
                mac,
                &kex::derive(shared, h, &sid, key, kl),
                &kex::derive(shared, h, &sid, iv, il),
                &kex::derive(shared, h, &sid, mk, ml),
            )
        };
        let c2s = make(&agreed.cipher_c2s, &agreed.mac_c2s, b'A', b'C', b'E');
        let s2c = make(&agreed.cipher_s2c, &agreed.mac_s2c, b'B', b'D', b'F');
        let (outgoing, incoming) = if self.is_server() {
            (s2c, c2s)
        } else {
            (c2s, s2c)
        };
        let reset_seq = self.strict;
        self.out
            .send(Out::Packet(vec![msg::NEWKEYS].into()))
            .await
            .map_err(|_| SshError::Closed)?;
        self.out
            .send(Out::NewKeys {
                dir: outgoing,
                reset_seq,
            })
            .await
            .map_err(|_| SshError::Closed)?;
        let _ = self.keys_in.send(KeysIn {
            dir: incoming,
            reset_seq,
        });
        self.kex = KexState::AwaitNewKeys;
        // Our side of the exchange is over: what was held back goes now, under the new keys.
        self.paused = false;
        for p in std::mem::take(&mut self.deferred) {
            self.out
                .send(Out::Packet(p))
                .await
                .map_err(|_| SshError::Closed)?;
        }
        Ok(())
    }

    pub(super) async fn server_ecdh(
        &mut self,
        payload: &[u8],
        ours: Vec<u8>,
        theirs: Vec<u8>,
        agreed: Box<Agreed>,
    ) -> Result<(), SshError> {
        let Role::Server(config) = &self.role else {
            unreachable!("server only")
        };
        let key = config
            .keys
            .iter()
            .find(|k| k.algorithms().contains(&agreed.host_key.as_str()))
            .ok_or_else(|| SshError::HostKey(format!("no host key can sign {}", agreed.host_key)))?
            .clone();
        let mut r = Reader::new(&payload[1..]);
        let q_c = r.string()?.to_vec();
        let e = Ephemeral::new();
        let q_s = e.public;
        let shared = e.agree(&q_c)?;
        let k_s = key.public().blob();
        let h = kex::exchange_hash(
            &self.v_c, &self.v_s, &theirs, &ours, &k_s, &q_c, &q_s, &shared,
        );
        let sig = key
            .sign(&agreed.host_key, &h)
            .map_err(|e| SshError::HostKey(e.to_string()))?;
        let mut w = Writer::msg(msg::KEX_ECDH_REPLY);
        w.string(&k_s).string(q_s).string(sig);
        self.send(w.finish()).await?;
        self.finish_kex(&agreed, &shared, &h).await
    }

    pub(super) async fn client_ecdh(
        &mut self,
        payload: &[u8],
        ours: Vec<u8>,
        theirs: Vec<u8>,
        agreed: Box<Agreed>,
        e: Ephemeral,
    ) -> Result<(), SshError> {
        let Role::Client(config) = &self.role else {
            unreachable!("client only")
        };
        let mut r = Reader::new(&payload[1..]);
        let k_s = r.string()?.to_vec();
        let q_s = r.string()?.to_vec();
        let sig = r.string()?.to_vec();
        let host = PublicKey::from_blob(&k_s).map_err(|e| SshError::HostKey(e.to_string()))?;
        if let HostKeyCheck::Pinned(want) = &config.host_key {
            if &host != want {
                return Err(SshError::HostKey(format!(
                    "the server's key {} is not the one expected",
                    host.to_openssh()
                )));
            }
        }
        let q_c = e.public;
        let shared = e.agree(&q_s)?;
        let h = kex::exchange_hash(
            &self.v_c, &self.v_s, &ours, &theirs, &k_s, &q_c, &q_s, &shared,
        );
        host.verify(&agreed.host_key, &h, &sig).map_err(|_| {
            SshError::HostKey("the server's signature of the exchange does not verify".into())
        })?;
        self.finish_kex(&agreed, &shared, &h).await
    }

    pub(super) async fn after_first_kex(&mut self) -> Result<(), SshError> {
        if self.is_server() && self.peer_ext_info {
            // RFC 8308: tell the client which signature algorithms user keys may use.
            let mut w = Writer::msg(msg::EXT_INFO);
            w.u32(1).string("server-sig-algs").name_list(&[
                crate::keys::SSH_ED25519,
                crate::keys::RSA_SHA2_512,
                crate::keys::RSA_SHA2_256,
                crate::keys::SSH_RSA,
            ]);
            self.send(w.finish()).await?;
        }
        if !self.is_server() {
            let mut w = Writer::msg(msg::SERVICE_REQUEST);
            w.string("ssh-userauth");
            self.send(w.finish()).await?;
        }
        Ok(())
    }
}
