//! Applying the config file's tenants (agencies, clients, keys) to the
//! control store at start.
//!
//! The config file and the admin API manage the same objects, so the rule
//! is "the last deliberate change wins": each object written from the file
//! remembers a hash of its declaration (`seed`). At start, an object whose
//! declaration is new or changed since it was last applied is (re)written
//! from the file, audited as actor `config`; an unchanged declaration leaves
//! the stored object alone, so changes made through the API survive a
//! restart. Keys the file no longer declares are revoked.

use std::collections::HashSet;

use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::model::{kind, *};
use super::service::{Admin, AdminError, Change, Principal, to_value};
use crate::config::{Config, ConfigError};
use crate::plugin::ContentHash;

/// Why the config file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A declaration is wrong (names file and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The control store refused or failed.
    #[error("applying the config file's tenants: {0}")]
    Admin(#[from] AdminError),
}

fn seed_of(value: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(value.to_string().as_bytes()))
}

fn config_error(config: &Config, key: String, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        file: config.source.clone(),
        key,
        reason: reason.into(),
    }
}

/// Applies `config`'s agencies, clients and keys (see the module doc).
pub async fn apply(admin: &Admin, config: &Config) -> Result<(), SeedError> {
    let _guard = admin.write_lock().lock().await;
    for (id, name) in &config.agencies {
        let webhook = config.webhooks.get(id);
        let declared = json!({
            "name": name,
            "webhook_url": webhook.map(|w| &w.url),
            "webhook_secret": webhook.map(|w| hex::encode(&w.secret)),
        });
        let seed = seed_of(&declared);
        let existing = admin.get::<AgencyDoc>(kind::AGENCY, id)?;
        let (rev, mut doc, before) = match existing {
            Some((_, doc)) if doc.seed.as_deref() == Some(seed.as_str()) => continue,
            Some((rev, doc)) => {
                let before = to_value(&doc.name)?;
                (rev, doc, Some(before))
            }
            None => (
                0,
                AgencyDoc {
                    id: id.clone(),
                    name: name.clone(),
                    created_at: Utc::now(),
                    platform_fee_percent: None,
                    webhook_url: None,
                    webhook_secret: None,
                    binding: BindingSlot::default(),
                    seed: None,
                },
                None,
            ),
        };
        doc.name = name.clone();
        doc.webhook_url = webhook.map(|w| w.url.clone());
        doc.webhook_secret = webhook.map(|w| String::from_utf8_lossy(&w.secret).into_owned());
        doc.seed = Some(seed);
        admin.record(
            &Principal::Config,
            Change {
                agency: Some(id),
                action: if rev == 0 {
                    "agency.create"
                } else {
                    "agency.update"
                },
                object: (kind::AGENCY, id),
                before,
                after: Some(declared),
                writes: vec![Admin::put(kind::AGENCY, id, &doc, rev)?],
            },
        )?;
    }

    for (i, client) in config.clients.iter().enumerate() {
        let key = |field: &str| format!("clients[{i}].{field}");
        let bytes = std::fs::read(&client.plugin).map_err(|e| {
            config_error(
                config,
                key("plugin"),
                format!("cannot read {}: {e}", client.plugin.display()),
            )
        })?;
        let sha = ContentHash::of(&bytes).hex();
        let plugin = admin
            .runtime()
            .load(bytes.clone())
            .await
            .map_err(|e| config_error(config, key("plugin"), e.to_string()))?;
        match plugin.validate_config(&client.plugin_config).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(config_error(config, key("plugin_config"), message).into());
            }
            Err(e) => {
                return Err(config_error(
                    config,
                    key("plugin"),
                    format!("the plugin failed validating its config: {e}"),
                )
                .into());
            }
        }
        admin
            .store()
            .put_blob(&sha, &bytes)
            .map_err(AdminError::from)?;
        admin.remember_plugin(&sha, plugin.clone());
        let plugin_id = format!("{}/{sha}", client.agency);
        if admin.get::<PluginDoc>(kind::PLUGIN, &plugin_id)?.is_none() {
            let info = plugin.info();
            let doc = PluginDoc {
                agency_id: client.agency.clone(),
                sha256: sha.clone(),
                label: client
                    .plugin
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                note: format!("declared in {}", config.source.display()),
                size_bytes: bytes.len() as u64,
                uploaded_at: Utc::now(),
                uploaded_by: "config".into(),
                name: info.name.clone(),
                version: info.version.clone(),
                description: info.description.clone(),
                smoke: None,
            };
            admin.record(
                &Principal::Config,
                Change {
                    agency: Some(&client.agency),
                    action: "plugin.upload",
                    object: (kind::PLUGIN, &sha),
                    before: None,
                    after: Some(to_value(&doc)?),
                    writes: vec![Admin::put(kind::PLUGIN, &plugin_id, &doc, 0)?],
                },
            )?;
        }
        let declared = json!({
            "agency": client.agency,
            "plugin_sha256": sha,
            "config": client.plugin_config,
            "failure_policy": client.failure_policy,
            "models": client.models,
            "rate_limit_per_minute": client.rate_limit_per_minute,
            "plan": client.plan.as_ref().map(|p| json!({
                "prepaid": p.prepaid,
                "monthly_cap": p.monthly_cap,
                "alert_thresholds": p.alert_thresholds,
                "included_per_period": p.included_per_period,
            })),
        });
        let seed = seed_of(&declared);
        let existing = admin.get::<ClientDoc>(kind::CLIENT, &client.id)?;
        let (rev, mut doc) = match existing {
            Some((_, doc)) if doc.seed.as_deref() == Some(seed.as_str()) => continue,
            Some((rev, doc)) => (rev, doc),
            None => (
                0,
                ClientDoc {
                    id: client.id.clone(),
                    agency_id: client.agency.clone(),
                    name: client.id.clone(),
                    created_at: Utc::now(),
                    models: None,
                    rate_limit_per_minute: None,
                    binding: BindingSlot::default(),
                    disabled_at: None,
                    seed: None,
                },
            ),
        };
        let before = (rev > 0).then(|| to_value(&doc)).transpose()?;
        doc.agency_id = client.agency.clone();
        doc.models = client.models.clone();
        doc.rate_limit_per_minute = client.rate_limit_per_minute;
        doc.disabled_at = None;
        doc.seed = Some(seed);
        let same_binding = doc.binding.current.as_ref().is_some_and(|b| {
            b.plugin_sha256 == sha
                && b.config == client.plugin_config
                && b.failure_policy == client.failure_policy
        });
        if !same_binding {
            let binding = BindingDoc {
                revision: doc.binding.next_revision(),
                plugin_sha256: sha.clone(),
                config: client.plugin_config.clone(),
                failure_policy: client.failure_policy,
                bound_at: Utc::now(),
                bound_by: "config".into(),
            };
            doc.binding.replace(Some(binding));
        }
        let mut plan = admin.ledger().plan(&client.id).map_err(AdminError::from)?;
        let plan_before = plan.clone();
        plan.agency_id = Some(client.agency.clone());
        if let Some(p) = &client.plan {
            plan.billing = if p.prepaid {
                tollgate_ledger::Billing::Prepaid
            } else {
                tollgate_ledger::Billing::Postpaid
            };
            plan.monthly_cap = p.monthly_cap;
            plan.alert_thresholds_pct = p.alert_thresholds.clone();
            plan.included_per_period = p.included_per_period;
        }
        if plan != plan_before {
            admin.ledger().set_plan(plan).map_err(AdminError::from)?;
        }
        admin.record(
            &Principal::Config,
            Change {
                agency: Some(&client.agency),
                action: if rev == 0 {
                    "client.create"
                } else {
                    "client.update"
                },
                object: (kind::CLIENT, &client.id),
                before,
                after: Some(declared),
                writes: vec![Admin::put(kind::CLIENT, &client.id, &doc, rev)?],
            },
        )?;
    }

    let mut declared_keys = HashSet::new();
    for k in &config.keys {
        let sha = hex::encode(k.sha256);
        let id = format!("cfg_{}", &sha[..16]);
        declared_keys.insert(id.clone());
        let agency = config
            .clients
            .iter()
            .find(|c| c.id == k.client)
            .map(|c| c.agency.clone())
            .unwrap_or_default();
        if admin.get::<AppDoc>(kind::APP, &k.app)?.is_none() {
            let app = AppDoc {
                id: k.app.clone(),
                client_id: k.client.clone(),
                agency_id: agency.clone(),
                name: k.app.clone(),
                created_at: Utc::now(),
            };
            admin.record(
                &Principal::Config,
                Change::created(
                    Some(&agency),
                    "app.create",
                    (kind::APP, &k.app),
                    &app,
                    to_value(&app)?,
                )?,
            )?;
        }
        if admin.get::<AppKeyDoc>(kind::APP_KEY, &id)?.is_some() {
            continue;
        }
        let doc = AppKeyDoc {
            id: id.clone(),
            app_id: k.app.clone(),
            client_id: k.client.clone(),
            agency_id: agency.clone(),
            sha256: sha,
            hint: "tg_live_… (config)".into(),
            label: "declared in the config file".into(),
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            from_config: true,
        };
        admin.record(
            &Principal::Config,
            Change::created(
                Some(&agency),
                "key.create",
                (kind::APP_KEY, &id),
                &doc,
                json!({"id": id, "app_id": k.app, "client_id": k.client}),
            )?,
        )?;
    }
    for key in admin.list::<AppKeyDoc>(kind::APP_KEY)? {
        if key.from_config && key.revoked_at.is_none() && !declared_keys.contains(&key.id) {
            let (rev, mut doc) = match admin.get::<AppKeyDoc>(kind::APP_KEY, &key.id)? {
                Some(found) => found,
                None => continue,
            };
            doc.revoked_at = Some(Utc::now());
            admin.record(
                &Principal::Config,
                Change {
                    agency: Some(&key.agency_id),
                    action: "key.revoke",
                    object: (kind::APP_KEY, &key.id),
                    before: None,
                    after: Some(
                        json!({"id": key.id, "reason": "no longer declared in the config file"}),
                    ),
                    writes: vec![Admin::put(kind::APP_KEY, &key.id, &doc, rev)?],
                },
            )?;
        }
    }
    drop(_guard);
    admin.refresh().await?;
    Ok(())
}
