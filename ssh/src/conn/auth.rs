//! Services and user authentication (RFC 4252): `none` and `publickey` for either role.

use super::*;

impl<H: Handler> Conn<H> {
    pub(super) async fn service(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let mut r = Reader::new(&payload[1..]);
        match payload[0] {
            msg::SERVICE_REQUEST if self.is_server() => {
                let name = r.utf8()?;
                if name != "ssh-userauth" || self.auth != Auth::Start {
                    let mut w = Writer::msg(msg::DISCONNECT);
                    w.u32(msg::DISCONNECT_SERVICE_NOT_AVAILABLE)
                        .string(format!("service {name} not available"))
                        .string("");
                    self.send(w.finish()).await?;
                    self.disconnected = true;
                    return Ok(());
                }
                self.auth = Auth::InProgress;
                let mut w = Writer::msg(msg::SERVICE_ACCEPT);
                w.string("ssh-userauth");
                self.send(w.finish()).await
            }
            msg::SERVICE_ACCEPT if !self.is_server() && self.auth == Auth::Start => {
                self.auth = Auth::InProgress;
                let user = match &self.role {
                    Role::Client(c) => c.user.clone(),
                    Role::Server(_) => unreachable!(),
                };
                let mut w = Writer::msg(msg::USERAUTH_REQUEST);
                w.string(user).string("ssh-connection").string("none");
                self.send(w.finish()).await
            }
            msg::EXT_INFO => Ok(()),
            n => Err(protocol(format!("unexpected service message {n}"))),
        }
    }

    pub(super) async fn userauth(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        if self.is_server() {
            self.server_userauth(payload).await
        } else {
            self.client_userauth(payload).await
        }
    }

    pub(super) async fn server_userauth(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        if payload[0] != msg::USERAUTH_REQUEST || self.auth != Auth::InProgress {
            return Err(protocol("unexpected authentication message"));
        }
        let mut r = Reader::new(&payload[1..]);
        let user = r.utf8()?.to_string();
        let service = r.utf8()?;
        let method = r.utf8()?;
        let ok = if service != "ssh-connection" {
            false
        } else {
            match method {
                "none" => self.handler.auth_none(&user),
                "publickey" => {
                    let has_sig = r.bool()?;
                    let alg = r.utf8()?.to_string();
                    let blob = r.string()?.to_vec();
                    let key = PublicKey::from_blob(&blob)
                        .ok()
                        .filter(|k| k.supports(&alg));
                    match key {
                        Some(key) if self.handler.auth_publickey(&user, &key) => {
                            if !has_sig {
                                let mut w = Writer::msg(msg::USERAUTH_PK_OK);
                                w.string(&alg).string(&blob);
                                return self.send(w.finish()).await;
                            }
                            let sig = r.string()?;
                            let mut signed = Writer::new();
                            signed
                                .string(self.session_id.as_deref().unwrap_or_default())
                                .u8(msg::USERAUTH_REQUEST)
                                .string(&user)
                                .string("ssh-connection")
                                .string("publickey")
                                .bool(true)
                                .string(&alg)
                                .string(&blob);
                            key.verify(&alg, &signed.0, sig).is_ok()
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        };
        if ok {
            self.auth = Auth::Done;
            self.send(vec![msg::USERAUTH_SUCCESS]).await?;
            let handle = self.handle.clone();
            self.handler.connected(handle);
            return Ok(());
        }
        self.auth_failures += 1;
        if self.auth_failures > MAX_AUTH_ATTEMPTS {
            return Err(SshError::Auth("too many attempts".into()));
        }
        let methods = match &self.role {
            Role::Server(c) => c.auth_methods.clone(),
            Role::Client(_) => Vec::new(),
        };
        let m: Vec<&str> = methods.iter().map(String::as_str).collect();
        let mut w = Writer::msg(msg::USERAUTH_FAILURE);
        w.name_list(&m).bool(false);
        self.send(w.finish()).await
    }

    pub(super) async fn client_userauth(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let Role::Client(config) = &self.role else {
            unreachable!("client only")
        };
        match payload[0] {
            msg::USERAUTH_SUCCESS => {
                self.auth = Auth::Done;
                let handle = self.handle.clone();
                self.handler.connected(handle);
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
                Ok(())
            }
            msg::USERAUTH_BANNER => Ok(()),
            msg::USERAUTH_FAILURE => {
                let mut r = Reader::new(&payload[1..]);
                let methods: Vec<String> = r.name_list()?.into_iter().map(str::to_string).collect();
                match (&config.key, self.client_tried_key) {
                    (Some(key), false) if methods.iter().any(|m| m == "publickey") => {
                        self.client_tried_key = true;
                        let alg = key.algorithms().first().copied().unwrap_or_default();
                        let blob = key.public().blob();
                        let mut signed = Writer::new();
                        signed
                            .string(self.session_id.as_deref().unwrap_or_default())
                            .u8(msg::USERAUTH_REQUEST)
                            .string(&config.user)
                            .string("ssh-connection")
                            .string("publickey")
                            .bool(true)
                            .string(alg)
                            .string(&blob);
                        let sig = key
                            .sign(alg, &signed.0)
                            .map_err(|e| SshError::Auth(e.to_string()))?;
                        let mut w = Writer::msg(msg::USERAUTH_REQUEST);
                        w.string(&config.user)
                            .string("ssh-connection")
                            .string("publickey")
                            .bool(true)
                            .string(alg)
                            .string(&blob)
                            .string(sig);
                        self.send(w.finish()).await
                    }
                    _ => Err(SshError::Auth(format!(
                        "the server refused user {} (it offers: {})",
                        config.user,
                        methods.join(",")
                    ))),
                }
            }
            n => Err(protocol(format!("unexpected authentication message {n}"))),
        }
    }
}
