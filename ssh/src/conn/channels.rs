//! The connection protocol (RFC 4254): global requests, channels and their requests, data
//! within the windows (chunks queued for a channel packed into full packets), EOF and CLOSE, and
//! the application's commands.

use super::*;

impl<H: Handler> Conn<H> {
    pub(super) fn chan(&mut self, id: u32) -> Result<&mut Chan, SshError> {
        self.channels
            .get_mut(&id)
            .ok_or_else(|| protocol(format!("no channel {id}")))
    }

    pub(super) async fn connection(&mut self, payload: Vec<u8>) -> Result<(), SshError> {
        let mut r = Reader::new(&payload[1..]);
        match payload[0] {
            msg::GLOBAL_REQUEST => {
                let name = r.utf8()?.to_string();
                let want_reply = r.bool()?;
                let answer = self
                    .handler
                    .global_request_later(&name, r.rest(), want_reply);
                match answer {
                    Some(answer) if want_reply => self.answer_global(answer).await,
                    _ => Ok(()),
                }
            }
            n @ (msg::REQUEST_SUCCESS | msg::REQUEST_FAILURE) => {
                let waiter = self
                    .globals
                    .pop_front()
                    .ok_or_else(|| protocol("a reply to no global request"))?;
                if let Some(w) = waiter {
                    let _ = w.send((n == msg::REQUEST_SUCCESS).then(|| r.rest().to_vec()));
                }
                Ok(())
            }
            msg::CHANNEL_OPEN => {
                let typ = r.utf8()?.to_string();
                let remote = r.u32()?;
                let window = r.u32()?;
                let max = r.u32()?;
                let id = self.next_channel;
                self.next_channel = self.next_channel.wrapping_add(1);
                let mut ch = Chan::new(&self.limits);
                ch.remote = remote;
                ch.remote_window = u64::from(window);
                ch.remote_max = max;
                ch.confirming = true;
                self.channels.insert(id, ch);
                match self
                    .handler
                    .channel_open_later(ChannelId(id), &typ, r.rest())
                {
                    Some(answer) => self.answer_open(id, answer).await,
                    None => Ok(()),
                }
            }
            msg::CHANNEL_OPEN_CONFIRMATION => {
                let id = r.u32()?;
                let remote = r.u32()?;
                let window = r.u32()?;
                let max = r.u32()?;
                let handle = self.handle.clone();
                let ch = self.chan(id)?;
                let opening = ch
                    .opening
                    .take()
                    .ok_or_else(|| protocol("confirmation of a channel not being opened"))?;
                ch.remote = remote;
                ch.remote_window = u64::from(window);
                ch.remote_max = max;
                let (tx, rx) = mpsc::unbounded_channel();
                ch.events = Some(tx);
                let _ = opening.send(Ok(Channel {
                    id: ChannelId(id),
                    handle,
                    events: rx,
                    unadjusted: 0,
                }));
                Ok(())
            }
            msg::CHANNEL_OPEN_FAILURE => {
                let id = r.u32()?;
                let reason = r.u32()?;
                let description = r.utf8()?.to_string();
                let ch = self
                    .channels
                    .remove(&id)
                    .ok_or_else(|| protocol(format!("no channel {id}")))?;
                if let Some(o) = ch.opening {
                    let _ = o.send(Err(OpenFailure {
                        reason,
                        description,
                    }));
                }
                Ok(())
            }
            msg::CHANNEL_WINDOW_ADJUST => {
                let id = r.u32()?;
                let n = r.u32()?;
                let ch = self.chan(id)?;
                ch.remote_window = (ch.remote_window + u64::from(n)).min(u64::from(u32::MAX));
                self.pump(id).await
            }
            msg::CHANNEL_DATA | msg::CHANNEL_EXTENDED_DATA => {
                let id = r.u32()?;
                let code = if payload[0] == msg::CHANNEL_EXTENDED_DATA {
                    Some(r.u32()?)
                } else {
                    None
                };
                let data = r.string()?;
                let max = self.limits.max_packet;
                let ch = self.chan(id)?;
                if data.len() as u64 > u64::from(ch.local_window) || data.len() as u32 > max {
                    return Err(protocol(format!("channel {id}: data beyond the window")));
                }
                ch.local_window -= data.len() as u32;
                let consumed_now = match &ch.events {
                    Some(ev) => {
                        let _ = ev.send(match code {
                            Some(c) => ChannelEvent::ExtendedData(c, data.to_vec()),
                            None => ChannelEvent::Data(data.to_vec()),
                        });
                        false
                    }
                    None => match code {
                        Some(c) => self.handler.extended_data(ChannelId(id), c, data),
                        None => self.handler.data(ChannelId(id), data),
                    },
                };
                if consumed_now {
                    self.adjust(id, data.len() as u32).await?;
                }
                Ok(())
            }
            msg::CHANNEL_EOF => {
                let id = r.u32()?;
                let ch = self.chan(id)?;
                match &ch.events {
                    Some(ev) => {
                        let _ = ev.send(ChannelEvent::Eof);
                    }
                    None => self.handler.eof(ChannelId(id)),
                }
                Ok(())
            }
            msg::CHANNEL_CLOSE => {
                let id = r.u32()?;
                let mut ch = self
                    .channels
                    .remove(&id)
                    .ok_or_else(|| protocol(format!("no channel {id}")))?;
                if !ch.sent_close {
                    let mut w = Writer::msg(msg::CHANNEL_CLOSE);
                    w.u32(ch.remote);
                    self.send(w.finish()).await?;
                }
                ch.queue.clear();
                match ch.events.take() {
                    Some(ev) => {
                        let _ = ev.send(ChannelEvent::Closed);
                    }
                    None => self.handler.closed(ChannelId(id)),
                }
                Ok(())
            }
            msg::CHANNEL_REQUEST => {
                let id = r.u32()?;
                let name = r.utf8()?.to_string();
                let want_reply = r.bool()?;
                let data = r.rest().to_vec();
                let ch = self.chan(id)?;
                let ok = match &ch.events {
                    Some(ev) => {
                        let _ = ev.send(ChannelEvent::Request { name, data });
                        false
                    }
                    None => {
                        match self.handler.channel_request_later(
                            ChannelId(id),
                            &name,
                            &data,
                            want_reply,
                        ) {
                            Some(ok) => ok,
                            None => return Ok(()),
                        }
                    }
                };
                if want_reply && self.channels.contains_key(&id) {
                    self.answer_request(id, ok).await?;
                }
                Ok(())
            }
            n @ (msg::CHANNEL_SUCCESS | msg::CHANNEL_FAILURE) => {
                let id = r.u32()?;
                let ch = self.chan(id)?;
                let waiter = ch
                    .requests
                    .pop_front()
                    .ok_or_else(|| protocol("a reply to no channel request"))?;
                if let Some(w) = waiter {
                    let _ = w.send(n == msg::CHANNEL_SUCCESS);
                }
                Ok(())
            }
            n => Err(protocol(format!("unexpected message {n}"))),
        }
    }

    /// Confirms or refuses a channel the peer opened.
    pub(super) async fn answer_open(
        &mut self,
        id: u32,
        answer: Result<(), OpenFailure>,
    ) -> Result<(), SshError> {
        let Some(ch) = self.channels.get_mut(&id).filter(|c| c.confirming) else {
            return Ok(());
        };
        let remote = ch.remote;
        match answer {
            Ok(()) => {
                ch.confirming = false;
                let mut w = Writer::msg(msg::CHANNEL_OPEN_CONFIRMATION);
                w.u32(remote)
                    .u32(id)
                    .u32(self.limits.window)
                    .u32(self.limits.max_packet);
                self.send(w.finish()).await?;
                self.pump(id).await
            }
            Err(f) => {
                self.channels.remove(&id);
                let mut w = Writer::msg(msg::CHANNEL_OPEN_FAILURE);
                w.u32(remote).u32(f.reason).string(f.description).string("");
                self.send(w.finish()).await
            }
        }
    }

    /// Answers the peer's global request: success with its payload, or failure.
    pub(super) async fn answer_global(&mut self, answer: Option<Vec<u8>>) -> Result<(), SshError> {
        let p = match answer {
            Some(data) => Writer::msg(msg::REQUEST_SUCCESS).raw(&data).finish(),
            None => vec![msg::REQUEST_FAILURE],
        };
        self.send(p).await
    }

    /// Answers the peer's channel request (in the order the requests came).
    pub(super) async fn answer_request(&mut self, id: u32, ok: bool) -> Result<(), SshError> {
        let Some(ch) = self.channels.get(&id) else {
            return Ok(());
        };
        let mut w = Writer::msg(if ok {
            msg::CHANNEL_SUCCESS
        } else {
            msg::CHANNEL_FAILURE
        });
        w.u32(ch.remote);
        self.send(w.finish()).await
    }

    /// Gives `n` consumed bytes back to the peer, in batches of at least a quarter window.
    pub(super) async fn adjust(&mut self, id: u32, n: u32) -> Result<(), SshError> {
        let window = self.limits.window;
        let Some(ch) = self.channels.get_mut(&id) else {
            return Ok(());
        };
        ch.consumed = ch.consumed.saturating_add(n);
        if ch.consumed >= window / 4 || ch.local_window < window / 2 {
            let give = ch.consumed;
            ch.consumed = 0;
            ch.local_window = ch.local_window.saturating_add(give);
            let mut w = Writer::msg(msg::CHANNEL_WINDOW_ADJUST);
            w.u32(ch.remote).u32(give);
            self.send(w.finish()).await?;
        }
        Ok(())
    }

    /// Sends what the peer's window allows of a channel's queue, then EOF/CLOSE when asked for.
    /// Queued chunks of the same stream share a packet, up to the packet size.
    pub(super) async fn pump(&mut self, id: u32) -> Result<(), SshError> {
        let mut packets = Vec::new();
        if let Some(ch) = self.channels.get_mut(&id) {
            if ch.opening.is_some() || ch.confirming || ch.sent_close {
                return Ok(());
            }
            let max = (ch.remote_max.max(1) as usize).min(32 * 1024);
            while let Some(ext) = ch.queue.front().map(|p| p.ext) {
                // The chunks (or parts) that go in this packet: the same stream, in order, as
                // much as the peer's window and the packet size allow.
                let room = ch.remote_window.min(max as u64) as usize;
                let mut take = 0usize;
                let mut parts = 0usize;
                for p in ch.queue.iter().take_while(|p| p.ext == ext) {
                    if take == room {
                        break;
                    }
                    take += (p.data.len() - p.sent).min(room - take);
                    parts += 1;
                }
                if take > 0 {
                    // The header, then slices of the chunks: the writer seals from them. The
                    // header's exact size: a full Vec becomes Bytes without an allocation.
                    let mut w = Writer(Vec::with_capacity(if ext.is_some() { 13 } else { 9 }));
                    w.u8(if ext.is_some() {
                        msg::CHANNEL_EXTENDED_DATA
                    } else {
                        msg::CHANNEL_DATA
                    });
                    w.u32(ch.remote);
                    if let Some(code) = ext {
                        w.u32(code);
                    }
                    w.u32(take as u32);
                    let mut slices = Vec::with_capacity(1 + parts);
                    slices.push(bytes::Bytes::from(w.finish()));
                    let mut left = take;
                    for p in ch.queue.iter_mut().take(parts) {
                        let n = (p.data.len() - p.sent).min(left);
                        slices.push(p.data.slice(p.sent..p.sent + n));
                        p.sent += n;
                        left -= n;
                    }
                    packets.push(Packet::parts(slices));
                    ch.remote_window -= take as u64;
                }
                // Chunks sent whole are done; an empty one is done at once.
                let mut progressed = take > 0;
                while ch.queue.front().is_some_and(|p| p.sent == p.data.len()) {
                    if let Some(done) = ch.queue.pop_front().and_then(|mut p| p.done.take()) {
                        let _ = done.send(());
                    }
                    progressed = true;
                }
                if !progressed {
                    break;
                }
            }
            if ch.queue.is_empty() {
                if ch.eof_wanted && !ch.sent_eof {
                    ch.sent_eof = true;
                    packets.push(Writer::msg(msg::CHANNEL_EOF).u32(ch.remote).finish().into());
                }
                if ch.close_wanted && !ch.sent_close {
                    ch.sent_close = true;
                    packets.push(
                        Writer::msg(msg::CHANNEL_CLOSE)
                            .u32(ch.remote)
                            .finish()
                            .into(),
                    );
                }
            }
        }
        for p in packets {
            self.send(p).await?;
        }
        Ok(())
    }

    pub(super) async fn command(&mut self, c: Command) -> Result<(), SshError> {
        match c {
            Command::Data {
                ch,
                ext,
                data,
                done,
            } => {
                if let Some(c) = self
                    .channels
                    .get_mut(&ch)
                    .filter(|c| !c.eof_wanted && !c.close_wanted)
                {
                    c.queue.push_back(Pending {
                        ext,
                        data,
                        sent: 0,
                        done: Some(done),
                    });
                    self.pump(ch).await?;
                }
                Ok(())
            }
            Command::Eof(ch) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.eof_wanted = true;
                    self.pump(ch).await?;
                }
                Ok(())
            }
            Command::Close(ch) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.close_wanted = true;
                    self.pump(ch).await?;
                }
                Ok(())
            }
            Command::Adjust(ch, n) => self.adjust(ch, n).await,
            Command::ChannelRequest {
                ch,
                name,
                data,
                reply,
            } => {
                let Some(c) = self
                    .channels
                    .get_mut(&ch)
                    .filter(|c| !c.sent_close && c.opening.is_none())
                else {
                    return Ok(()); // the reply sender is dropped: the caller sees the channel gone
                };
                let want = reply.is_some();
                if want {
                    c.requests.push_back(reply);
                }
                let mut w = Writer::msg(msg::CHANNEL_REQUEST);
                w.u32(c.remote).string(name).bool(want).raw(&data);
                self.send(w.finish()).await
            }
            Command::GlobalRequest { name, data, reply } => {
                let want = reply.is_some();
                if want {
                    self.globals.push_back(reply);
                }
                let mut w = Writer::msg(msg::GLOBAL_REQUEST);
                w.string(name).bool(want).raw(&data);
                self.send(w.finish()).await
            }
            Command::Open { typ, extra, reply } => {
                let id = self.next_channel;
                self.next_channel = self.next_channel.wrapping_add(1);
                let mut ch = Chan::new(&self.limits);
                ch.opening = Some(reply);
                self.channels.insert(id, ch);
                let mut w = Writer::msg(msg::CHANNEL_OPEN);
                w.string(typ)
                    .u32(id)
                    .u32(self.limits.window)
                    .u32(self.limits.max_packet)
                    .raw(&extra);
                self.send(w.finish()).await
            }
            Command::AnswerOpen(ch, answer) => self.answer_open(ch, answer).await,
            Command::AnswerRequest(ch, ok) => self.answer_request(ch, ok).await,
            Command::AnswerGlobal(answer) => self.answer_global(answer).await,
            Command::Disconnect(why) => {
                let mut w = Writer::msg(msg::DISCONNECT);
                w.u32(msg::DISCONNECT_BY_APPLICATION).string(why).string("");
                self.send(w.finish()).await?;
                self.disconnected = true;
                Ok(())
            }
        }
    }
}
