//! The terms each referral pays by: the campaign version it was bound to at attribution
//! (`referrals.campaign_id`, `terms_version`), or the embedded default campaign of the
//! settings (version 0). Versions never change once written, so they are cached for the life of
//! the process; a batch loads the ones it lacks in one query before it decides anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use refstream_core::campaign::Campaign;
use sqlx::PgConnection;

use crate::store::Referral;

/// Campaign versions by (campaign id, version).
pub struct Terms {
    default: Arc<Campaign>,
    loaded: Mutex<HashMap<(String, i32), Arc<Campaign>>>,
}

impl Terms {
    pub fn new(default: Campaign) -> Self {
        Self { default: Arc::new(default), loaded: Mutex::new(HashMap::new()) }
    }

    /// The embedded default campaign of the settings (version 0).
    pub fn default_campaign(&self) -> &Campaign {
        &self.default
    }

    fn cached(&self, key: &(String, i32)) -> Option<Arc<Campaign>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Loads, in one query, the versions `referrals` are bound to that are not cached yet.
    pub async fn load<'a>(&self, conn: &mut PgConnection, referrals: impl Iterator<Item = &'a Referral>) -> sqlx::Result<()> {
        let mut ids = Vec::new();
        let mut versions = Vec::new();
        for r in referrals.filter(|r| r.terms_version > 0) {
            let key = (r.campaign_id.clone(), r.terms_version);
            if self.cached(&key).is_none() && !ids.iter().zip(&versions).any(|(i, v)| (i, v) == (&key.0, &key.1)) {
                ids.push(key.0);
                versions.push(key.1);
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<(String, i32)> = ids.into_iter().zip(versions).collect();
        let rows = refstream_runtime::campaign_store::definitions(conn, &keys).await?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        for (id, version, definition) in rows {
            // Definitions were validated when applied; one that no longer validates (edited by
            // hand) pays nothing rather than paying by other terms.
            match definition.validate() {
                Ok((campaign, _)) => {
                    loaded.insert((id, version), Arc::new(campaign));
                }
                Err(e) => {
                    tracing::error!(campaign = %id, version, error = %e, "stored campaign version does not validate: it pays nothing")
                }
            }
        }
        Ok(())
    }

    /// The campaign `referral` pays by; `None` when its version is not loaded (it then waits:
    /// nothing is paid by other terms).
    pub fn of(&self, referral: &Referral) -> Option<Arc<Campaign>> {
        if referral.terms_version == 0 {
            return Some(Arc::clone(&self.default));
        }
        let found = self.cached(&(referral.campaign_id.clone(), referral.terms_version));
        if found.is_none() {
            tracing::error!(referral = %referral.referral_id, campaign = %referral.campaign_id, version = referral.terms_version, "campaign version not loaded");
        }
        found
    }
}
