//! Followers of applications that are still changing (pending ones).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::pb::{Application, ApplicationStatus};

/// One channel per followed application, dropped once it is final.
#[derive(Default)]
pub struct WatchHub {
    channels: Mutex<HashMap<String, watch::Sender<Arc<Application>>>>,
}

pub fn is_final(app: &Application) -> bool {
    app.status != ApplicationStatus::Pending as i32
}

impl WatchHub {
    /// Follows `current`'s application from its current state on.
    pub fn subscribe(&self, current: Arc<Application>) -> watch::Receiver<Arc<Application>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let sender = channels
            .entry(current.application_id.clone())
            .or_insert_with(|| watch::channel(Arc::clone(&current)).0);
        // The store may be ahead of the channel if the channel is new.
        sender.send_if_modified(|held| {
            if receipt_index(&current) > receipt_index(held) {
                *held = Arc::clone(&current);
                true
            } else {
                false
            }
        });
        sender.subscribe()
    }

    /// Announces a new state; forgets the channel once the state is final.
    pub fn publish(&self, app: Arc<Application>) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = channels.get(&app.application_id) {
            sender.send_replace(Arc::clone(&app));
        }
        if is_final(&app) {
            channels.remove(&app.application_id);
        }
    }

    pub fn followed(&self) -> usize {
        self.channels.lock().map(|c| c.len()).unwrap_or(0)
    }
}

pub fn receipt_index(app: &Application) -> u64 {
    app.receipt.as_ref().map(|r| r.index).unwrap_or(0)
}
