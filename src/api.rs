//! The server API as the admin listener reaches it: a call is a request
//! handed to a shard through the shard's mailbox, answered there by the same
//! routes the service port uses (the shard holds the Redis links and the
//! store), with the answer sent back on a one-shot channel.

use std::rc::Rc;

use futures_channel::oneshot;
use shards::{ControlReceiver, ControlSender};

use crate::context::Context;
use crate::http::Request;

/// Calls queued for one shard before the admin listener tries another.
pub const QUEUE: usize = 64;

/// One request for the server API, let in by the admin listener.
#[derive(Debug)]
pub struct Call {
    pub req: Request,
    pub reply: oneshot::Sender<Vec<u8>>,
}

/// The admin listener's ends of every shard's mailbox.
pub type Mailboxes = Vec<ControlSender<Call>>;

/// A shard's loop over its mailbox: each call runs in a task of its own, so
/// a slow Redis answer holds only its own call. Ends when the admin listener
/// is gone.
pub async fn serve(mut calls: ControlReceiver<Call>, ctx: Rc<Context>) {
    while let Some(call) = calls.recv().await {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            let answer = crate::routes::api(&ctx, &call.req).await;
            // The admin side may have given up on its deadline.
            let _ = call.reply.send(answer);
        })
        .detach();
    }
}
