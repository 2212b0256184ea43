//! The control-plane store: the admin API's documents (agencies, clients,
//! apps, keys, plugin versions, bindings), plugin binaries by content hash, and
//! the audit log of every change.
//!
//! The ledger crate stays ignorant of what the documents mean: a document is
//! JSON under `(kind, id)` with a revision number. What it guarantees is the
//! shape a SQL backend can give too: a [`ControlChange`] (several document
//! writes plus one audit entry) is applied atomically, each write may demand
//! the revision it read (optimistic concurrency, `UPDATE … WHERE revision = $n`
//! in SQL), and a change is durable when [`ControlStore::apply`] returns,
//! whatever the usage ledger's durability mode.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A stored document: its JSON body and the revision that wrote it (1 for the
/// first write, +1 per update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Kind of object (`agency`, `client`, …).
    pub kind: String,
    /// Its id, unique within the kind.
    pub id: String,
    /// Revision: 1 on creation, +1 on every update.
    pub revision: u64,
    /// The body.
    pub body: serde_json::Value,
}

/// One document write inside a [`ControlChange`].
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentWrite {
    /// Kind of object.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The new body; `None` deletes the document.
    pub body: Option<serde_json::Value>,
    /// The revision the writer read: `Some(0)` means "must not exist yet",
    /// `Some(n)` "must still be at revision n", `None` writes unconditionally.
    pub expect_revision: Option<u64>,
}

/// Who changed what, when, with the affected object before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, assigned by the store (increasing).
    #[serde(default)]
    pub seq: u64,
    /// When the change was made.
    pub at: DateTime<Utc>,
    /// Who made it (`operator`, `token:<id>`, `config`).
    pub actor: String,
    /// The agency the change belongs to; `None` for operator-wide changes.
    pub agency_id: Option<String>,
    /// What was done (`client.create`, `binding.set`, …).
    pub action: String,
    /// The object's kind.
    pub object_kind: String,
    /// The object's id.
    pub object_id: String,
    /// The object before the change (`None` when created).
    pub before: Option<serde_json::Value>,
    /// The object after the change (`None` when deleted).
    pub after: Option<serde_json::Value>,
}

/// An atomic change: all writes and the audit entry, or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlChange {
    /// Document writes.
    pub writes: Vec<DocumentWrite>,
    /// The audit entry (its `seq` is assigned by the store).
    pub audit: Option<AuditEntry>,
}

/// Which audit entries to list: newest first, `before` for the next page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only this agency's entries.
    pub agency_id: Option<String>,
    /// Only entries with `seq` below this (pagination cursor).
    pub before: Option<u64>,
    /// At most this many.
    pub limit: usize,
}

/// Why a change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A write's expected revision did not match; nothing was applied.
    #[error("{kind} {id} changed concurrently (expected revision {expected}, found {found})")]
    Conflict {
        /// Kind of object.
        kind: String,
        /// Its id.
        id: String,
        /// The revision the writer expected.
        expected: u64,
        /// The revision found (0 = absent).
        found: u64,
    },
    /// The backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A durable home for control-plane documents, binaries and the audit log.
pub trait ControlStore: Send + Sync + 'static {
    /// The document `(kind, id)`.
    fn get(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError>;
    /// Every document of `kind`, ordered by id.
    fn list(&self, kind: &str) -> Result<Vec<Document>, StoreError>;
    /// Applies `change` atomically and durably; returns the audit entry's seq.
    fn apply(&self, change: ControlChange) -> Result<Option<u64>, ControlError>;
    /// Stores a binary under its content hash (idempotent) and makes it durable.
    fn put_blob(&self, sha256_hex: &str, bytes: &[u8]) -> Result<(), StoreError>;
    /// The binary stored under `sha256_hex`.
    fn get_blob(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Audit entries, newest first.
    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
}

fn doc_key(kind: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(kind.len() + id.len() + 1);
    k.extend_from_slice(kind.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(format!("encode: {e}")))
}

fn decode_doc(key: &[u8], v: &[u8]) -> Result<Document, StoreError> {
    serde_json::from_slice(v).map_err(|e| corrupt(key, e))
}

fn matches(entry: &AuditEntry, q: &AuditQuery) -> bool {
    q.agency_id
        .as_ref()
        .is_none_or(|a| entry.agency_id.as_deref() == Some(a.as_str()))
}

/// [`ControlStore`] in the ledger's sled database (trees `control`,
/// `control_audit`, `control_blob`).
pub struct SledControlStore {
    db: sled::Db,
    docs: sled::Tree,
    audit: sled::Tree,
    blobs: sled::Tree,
}

impl std::fmt::Debug for SledControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledControlStore").finish_non_exhaustive()
    }
}

impl SledControlStore {
    pub(crate) fn new(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            docs: db.open_tree("control")?,
            audit: db.open_tree("control_audit")?,
            blobs: db.open_tree("control_blob")?,
            db,
        })
    }
}

impl ControlStore for SledControlStore {
    fn get(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError> {
        let key = doc_key(kind, id);
        self.docs
            .get(&key)?
            .map(|v| decode_doc(&key, &v))
            .transpose()
    }

    fn list(&self, kind: &str) -> Result<Vec<Document>, StoreError> {
        let mut prefix = kind.as_bytes().to_vec();
        prefix.push(0);
        self.docs
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode_doc(&k, &v)
            })
            .collect()
    }

    fn apply(&self, change: ControlChange) -> Result<Option<u64>, ControlError> {
        use sled::Transactional;
        use sled::transaction::{ConflictableTransactionError, TransactionError};
        let seq = match &change.audit {
            Some(_) => Some(self.db.generate_id().map_err(StoreError::from)? + 1),
            None => None,
        };
        let mut audit_value = None;
        if let (Some(entry), Some(seq)) = (&change.audit, seq) {
            let mut entry = entry.clone();
            entry.seq = seq;
            audit_value = Some(encode(&entry)?);
        }
        let result = (&self.docs, &self.audit).transaction(|(docs, audit)| {
            for w in &change.writes {
                let key = doc_key(&w.kind, &w.id);
                let current = match docs.get(&key)? {
                    Some(v) => Some(
                        decode_doc(&key, &v)
                            .map_err(|e| ConflictableTransactionError::Abort(e.into()))?,
                    ),
                    None => None,
                };
                let found = current.as_ref().map_or(0, |d| d.revision);
                if let Some(expected) = w.expect_revision
                    && expected != found
                {
                    return Err(ConflictableTransactionError::Abort(
                        ControlError::Conflict {
                            kind: w.kind.clone(),
                            id: w.id.clone(),
                            expected,
                            found,
                        },
                    ));
                }
                match &w.body {
                    Some(body) => {
                        let doc = Document {
                            kind: w.kind.clone(),
                            id: w.id.clone(),
                            revision: found + 1,
                            body: body.clone(),
                        };
                        let bytes = encode(&doc)
                            .map_err(|e| ConflictableTransactionError::Abort(e.into()))?;
                        docs.insert(key, bytes)?;
                    }
                    None => {
                        docs.remove(key)?;
                    }
                }
            }
            if let (Some(seq), Some(value)) = (seq, &audit_value) {
                audit.insert(&seq.to_be_bytes(), value.clone())?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(StoreError::from(e).into()),
        }
        self.db.flush().map_err(StoreError::from)?;
        Ok(seq)
    }

    fn put_blob(&self, sha256_hex: &str, bytes: &[u8]) -> Result<(), StoreError> {
        if self.blobs.contains_key(sha256_hex)? {
            return Ok(());
        }
        self.blobs.insert(sha256_hex, bytes)?;
        self.db.flush()?;
        Ok(())
    }

    fn get_blob(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.blobs.get(sha256_hex)?.map(|v| v.to_vec()))
    }

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let upper = q.before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for kv in self.audit.range(..upper.to_be_bytes()).rev() {
            let (k, v) = kv?;
            let entry: AuditEntry = serde_json::from_slice(&v).map_err(|e| corrupt(&k, e))?;
            if matches(&entry, q) {
                out.push(entry);
                if out.len() >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// [`ControlStore`] in memory, for ledgers opened on a custom store and for
/// tests. Not durable.
#[derive(Debug, Default)]
pub struct MemoryControlStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    docs: BTreeMap<(String, String), Document>,
    audit: Vec<AuditEntry>,
    blobs: BTreeMap<String, Vec<u8>>,
}

impl MemoryControlStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ControlStore for MemoryControlStore {
    fn get(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError> {
        Ok(self
            .lock()
            .docs
            .get(&(kind.to_owned(), id.to_owned()))
            .cloned())
    }

    fn list(&self, kind: &str) -> Result<Vec<Document>, StoreError> {
        Ok(self
            .lock()
            .docs
            .values()
            .filter(|d| d.kind == kind)
            .cloned()
            .collect())
    }

    fn apply(&self, change: ControlChange) -> Result<Option<u64>, ControlError> {
        let mut inner = self.lock();
        for w in &change.writes {
            let found = inner
                .docs
                .get(&(w.kind.clone(), w.id.clone()))
                .map_or(0, |d| d.revision);
            if let Some(expected) = w.expect_revision
                && expected != found
            {
                return Err(ControlError::Conflict {
                    kind: w.kind.clone(),
                    id: w.id.clone(),
                    expected,
                    found,
                });
            }
        }
        for w in change.writes {
            let key = (w.kind.clone(), w.id.clone());
            match w.body {
                Some(body) => {
                    let revision = inner.docs.get(&key).map_or(0, |d| d.revision) + 1;
                    inner.docs.insert(
                        key,
                        Document {
                            kind: w.kind,
                            id: w.id,
                            revision,
                            body,
                        },
                    );
                }
                None => {
                    inner.docs.remove(&key);
                }
            }
        }
        Ok(change.audit.map(|mut entry| {
            entry.seq = inner.audit.len() as u64 + 1;
            inner.audit.push(entry);
            inner.audit.len() as u64
        }))
    }

    fn put_blob(&self, sha256_hex: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.lock()
            .blobs
            .entry(sha256_hex.to_owned())
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }

    fn get_blob(&self, sha256_hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().blobs.get(sha256_hex).cloned())
    }

    fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let upper = q.before.unwrap_or(u64::MAX);
        Ok(self
            .lock()
            .audit
            .iter()
            .rev()
            .filter(|e| e.seq < upper && matches(e, q))
            .take(q.limit)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stores() -> Vec<Box<dyn ControlStore>> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled");
        vec![
            Box::new(SledControlStore::new(db).expect("trees")),
            Box::new(MemoryControlStore::default()),
        ]
    }

    fn write(id: &str, body: serde_json::Value, expect: Option<u64>) -> DocumentWrite {
        DocumentWrite {
            kind: "client".into(),
            id: id.into(),
            body: Some(body),
            expect_revision: expect,
        }
    }

    fn entry(agency: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            at: Utc::now(),
            actor: "operator".into(),
            agency_id: Some(agency.into()),
            action: "client.create".into(),
            object_kind: "client".into(),
            object_id: "c".into(),
            before: None,
            after: Some(serde_json::json!({})),
        }
    }

    #[test]
    fn revisions_count_up_and_conflicts_apply_nothing() {
        for store in stores() {
            let seq = store
                .apply(ControlChange {
                    writes: vec![write("a", serde_json::json!({"n": 1}), Some(0))],
                    audit: Some(entry("x")),
                })
                .unwrap();
            assert!(seq.is_some());
            let a = store.get("client", "a").unwrap().unwrap();
            assert_eq!(a.revision, 1);
            store
                .apply(ControlChange {
                    writes: vec![write("a", serde_json::json!({"n": 2}), Some(1))],
                    audit: Some(entry("x")),
                })
                .unwrap();
            // A stale revision on one write aborts the whole change, b included.
            let err = store
                .apply(ControlChange {
                    writes: vec![
                        write("b", serde_json::json!({"n": 1}), Some(0)),
                        write("a", serde_json::json!({"n": 3}), Some(1)),
                    ],
                    audit: Some(entry("x")),
                })
                .unwrap_err();
            assert!(matches!(
                err,
                ControlError::Conflict {
                    expected: 1,
                    found: 2,
                    ..
                }
            ));
            assert!(store.get("client", "b").unwrap().is_none());
            assert_eq!(store.get("client", "a").unwrap().unwrap().body["n"], 2);
            assert_eq!(store.list("client").unwrap().len(), 1);
            assert!(store.list("agency").unwrap().is_empty());
            let log = store
                .audit(&AuditQuery {
                    limit: 10,
                    ..AuditQuery::default()
                })
                .unwrap();
            assert_eq!(log.len(), 2, "the aborted change left no audit entry");
            assert!(log[0].seq > log[1].seq, "newest first");
        }
    }

    #[test]
    fn audit_filters_by_agency_and_pages() {
        for store in stores() {
            for agency in ["x", "y", "x", "x"] {
                store
                    .apply(ControlChange {
                        writes: vec![],
                        audit: Some(entry(agency)),
                    })
                    .unwrap();
            }
            let q = |before| AuditQuery {
                agency_id: Some("x".into()),
                before,
                limit: 2,
            };
            let first = store.audit(&q(None)).unwrap();
            assert_eq!(first.len(), 2);
            let next = store.audit(&q(Some(first[1].seq))).unwrap();
            assert_eq!(next.len(), 1);
            assert!(next[0].seq < first[1].seq);
            assert!(
                first
                    .iter()
                    .chain(&next)
                    .all(|e| e.agency_id.as_deref() == Some("x"))
            );
        }
    }

    #[test]
    fn blobs_are_write_once() {
        for store in stores() {
            store.put_blob("h", b"one").unwrap();
            store.put_blob("h", b"two").unwrap();
            assert_eq!(store.get_blob("h").unwrap().unwrap(), b"one");
            assert!(store.get_blob("missing").unwrap().is_none());
        }
    }
}
