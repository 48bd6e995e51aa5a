//! The checker of a fault run (pure): from each blob's operation history
//! (one client owns a blob, so its history is a sequence) and what is
//! observed once the fleet healed, the violations of the promises.

use std::collections::BTreeMap;

use serde::Serialize;

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// PUT of the blob's bytes.
    Put,
    /// GET, compared with the bytes.
    Get,
    /// DELETE.
    Delete,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx (for a GET: exactly the blob's bytes).
    Ok,
    /// 404.
    NotFound,
    /// Another status.
    Failed(u16),
    /// No answer (the connection broke or the client gave up).
    NoAnswer,
    /// A GET answered 200 with bytes other than the blob's.
    WrongBytes,
}

/// One operation of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// The client that ran it.
    pub client: usize,
    /// The blob id.
    pub blob: String,
    /// The seed its bytes follow from.
    pub seed: u64,
    /// What it was.
    pub kind: OpKind,
    /// How it ended.
    pub outcome: Outcome,
    /// Milliseconds from the start of the run.
    pub started_ms: u64,
    /// Milliseconds from the start of the run.
    pub ended_ms: u64,
}

/// What a blob must be, as far as its history tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A write was acknowledged and no delete since.
    Present,
    /// Never acknowledged, or acknowledged deleted since.
    Absent,
    /// An unanswered write or a failed delete: either is right.
    Either,
}

/// What was seen of a blob after the fleet healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Final {
    /// A GET of it.
    pub read: Outcome,
    /// Whether the status lists it.
    pub listed: bool,
    /// Whether some node still holds data of it (after the staging TTL).
    pub held: bool,
}

/// Walks one blob's history; returns what it must be at the end, and the
/// violations seen along the way.
///
/// Clients write their own blobs, but short ones (the empty blob above
/// all) can have the same bytes, hence the same id, for several clients,
/// whose operations then interleave: such a blob is held only to reading
/// back its own bytes, and may end present or absent.
pub fn walk(ops: &[&Op]) -> (Expect, Vec<String>) {
    let clients: std::collections::BTreeSet<usize> = ops.iter().map(|op| op.client).collect();
    if clients.len() > 1 {
        let wrong = ops
            .iter()
            .filter(|op| op.outcome == Outcome::WrongBytes)
            .map(|op| wrong_bytes(op))
            .collect();
        return (Expect::Either, wrong);
    }
    let mut expect = Expect::Absent;
    let mut violations = Vec::new();
    for op in ops {
        let at = op.started_ms;
        expect = match (op.kind, op.outcome, expect) {
            (_, Outcome::WrongBytes, e) => {
                violations.push(wrong_bytes(op));
                e
            }
            (OpKind::Put, Outcome::Ok, _) => Expect::Present,
            (OpKind::Put, Outcome::NoAnswer, Expect::Absent) => Expect::Either,
            (OpKind::Put, _, e) => e,
            (OpKind::Delete, Outcome::Ok, _) => Expect::Absent,
            (OpKind::Delete, Outcome::NotFound, Expect::Present) => {
                violations.push(format!(
                    "{} at {at} ms: DELETE answered 404 for an acknowledged blob",
                    op.blob
                ));
                Expect::Absent
            }
            (OpKind::Delete, Outcome::NotFound, _) => Expect::Absent,
            (OpKind::Delete, _, Expect::Absent) => Expect::Absent,
            (OpKind::Delete, _, _) => Expect::Either,
            (OpKind::Get, Outcome::Ok, Expect::Absent) => {
                violations.push(format!(
                    "{} at {at} ms: visible though never acknowledged or deleted",
                    op.blob
                ));
                Expect::Absent
            }
            (OpKind::Get, Outcome::NotFound, Expect::Present) => {
                violations.push(format!(
                    "{} at {at} ms: an acknowledged blob read 404",
                    op.blob
                ));
                Expect::Present
            }
            (OpKind::Get, Outcome::Failed(code), Expect::Present) => {
                violations.push(format!(
                    "{} at {at} ms: an acknowledged blob could not be read ({code}) with at most f nodes faulty",
                    op.blob
                ));
                Expect::Present
            }
            (OpKind::Get, Outcome::NoAnswer, Expect::Present) => {
                violations.push(format!(
                    "{} at {at} ms: a read of an acknowledged blob got no answer",
                    op.blob
                ));
                Expect::Present
            }
            (OpKind::Get, _, e) => e,
        };
    }
    (expect, violations)
}

/// The violation of a GET that returned other bytes than the blob's.
fn wrong_bytes(op: &Op) -> String {
    format!(
        "{} at {} ms: GET returned other bytes",
        op.blob, op.started_ms
    )
}

/// Checks the final observation of a blob against what it must be.
pub fn check_final(blob: &str, expect: Expect, seen: Final) -> Vec<String> {
    let mut violations = Vec::new();
    let mut fail = |what: &str| violations.push(format!("{blob} after healing: {what}"));
    match expect {
        Expect::Present => {
            if seen.read != Outcome::Ok {
                fail(&format!("an acknowledged write reads {:?}", seen.read));
            }
            if !seen.listed {
                fail("an acknowledged write is not listed");
            }
        }
        Expect::Absent => {
            if seen.read != Outcome::NotFound {
                fail(&format!(
                    "a deleted or never acknowledged blob reads {:?}",
                    seen.read
                ));
            }
            if seen.listed {
                fail("a deleted or never acknowledged blob is listed");
            }
            if seen.held {
                fail("pieces of a deleted or never acknowledged blob stay on a node");
            }
        }
        Expect::Either => match seen.read {
            Outcome::Ok if seen.listed => {}
            Outcome::NotFound if !seen.listed && !seen.held => {}
            other => fail(&format!(
                "neither whole nor gone: reads {other:?}, listed {}, held {}",
                seen.listed, seen.held
            )),
        },
    }
    violations
}

/// Whether pieces of a blob still held must go before the final check: a
/// blob expected absent, and one either way that is not listed (an
/// unanswered write that did not commit). One either way that committed
/// stays, as an acknowledged write does.
pub fn must_go(expect: Expect, listed: bool) -> bool {
    match expect {
        Expect::Present => false,
        Expect::Absent => true,
        Expect::Either => !listed,
    }
}

/// Every blob's history, in order, by id.
pub fn histories(ops: &[Op]) -> BTreeMap<&str, Vec<&Op>> {
    let mut by_blob: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_blob.entry(op.blob.as_str()).or_default().push(op);
    }
    for history in by_blob.values_mut() {
        history.sort_by_key(|op| op.started_ms);
    }
    by_blob
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, outcome: Outcome, at: u64) -> Op {
        Op {
            client: 0,
            blob: "b".into(),
            seed: 1,
            kind,
            outcome,
            started_ms: at,
            ended_ms: at + 1,
        }
    }

    fn run(ops: &[Op]) -> (Expect, usize) {
        let refs: Vec<&Op> = ops.iter().collect();
        let (expect, violations) = walk(&refs);
        (expect, violations.len())
    }

    #[test]
    fn a_blob_several_clients_share_is_held_only_to_its_own_bytes() {
        use OpKind::*;
        use Outcome::*;
        let by = |client: usize, kind, outcome, at| Op {
            client,
            ..op(kind, outcome, at)
        };
        // Client 1 deleted the empty blob client 0 had written and reads.
        let shared = [
            by(0, Put, Ok, 1),
            by(1, Put, Ok, 2),
            by(1, Delete, Ok, 3),
            by(0, Get, NotFound, 4),
            by(0, Get, Ok, 5),
        ];
        assert_eq!(run(&shared), (Expect::Either, 0));
        let garbled = [by(0, Put, Ok, 1), by(1, Get, WrongBytes, 2)];
        assert_eq!(run(&garbled), (Expect::Either, 1));
        // The same operations from one client break its history.
        let one: Vec<Op> = shared
            .iter()
            .map(|o| Op {
                client: 0,
                ..o.clone()
            })
            .collect();
        assert_eq!(run(&one).1, 1, "read back after the client's own delete");
    }

    #[test]
    fn a_history_tells_what_a_blob_must_be_and_what_it_must_never_have_done() {
        use OpKind::*;
        use Outcome::*;
        let cases = [
            (vec![op(Put, Ok, 0), op(Get, Ok, 1)], (Expect::Present, 0)),
            (
                vec![op(Put, Failed(503), 0), op(Get, NotFound, 1)],
                (Expect::Absent, 0),
            ),
            (
                vec![op(Put, Failed(503), 0), op(Get, Ok, 1)],
                (Expect::Absent, 1),
            ),
            (
                vec![op(Put, NoAnswer, 0), op(Get, Ok, 1)],
                (Expect::Either, 0),
            ),
            (
                vec![op(Put, Ok, 0), op(Delete, Ok, 1), op(Get, Ok, 2)],
                (Expect::Absent, 1),
            ),
            (
                vec![op(Put, Ok, 0), op(Delete, Failed(503), 1)],
                (Expect::Either, 0),
            ),
            (
                vec![op(Put, Ok, 0), op(Delete, Ok, 1), op(Put, Ok, 2)],
                (Expect::Present, 0),
            ),
            (
                vec![op(Put, Ok, 0), op(Get, Failed(503), 1)],
                (Expect::Present, 1),
            ),
            (
                vec![op(Put, Ok, 0), op(Get, WrongBytes, 1)],
                (Expect::Present, 1),
            ),
            (
                vec![op(Put, Ok, 0), op(Put, Failed(503), 1)],
                (Expect::Present, 0),
            ),
        ];
        for (ops, expected) in cases {
            assert_eq!(run(&ops), expected, "{ops:?}");
        }
    }

    #[test]
    fn the_settling_waits_only_for_pieces_that_must_go() {
        assert!(must_go(Expect::Absent, false));
        assert!(
            must_go(Expect::Either, false),
            "an uncommitted write's pieces go"
        );
        assert!(!must_go(Expect::Either, true), "a committed one's stay");
        assert!(!must_go(Expect::Present, true));
    }

    #[test]
    fn after_healing_a_blob_is_whole_or_gone_as_its_history_demands() {
        let whole = Final {
            read: Outcome::Ok,
            listed: true,
            held: true,
        };
        let gone = Final {
            read: Outcome::NotFound,
            listed: false,
            held: false,
        };
        let leftovers = Final { held: true, ..gone };
        assert!(check_final("b", Expect::Present, whole).is_empty());
        assert_eq!(check_final("b", Expect::Present, gone).len(), 2);
        assert!(check_final("b", Expect::Absent, gone).is_empty());
        assert_eq!(check_final("b", Expect::Absent, leftovers).len(), 1);
        assert!(check_final("b", Expect::Either, whole).is_empty());
        assert!(check_final("b", Expect::Either, gone).is_empty());
        assert_eq!(check_final("b", Expect::Either, leftovers).len(), 1);
    }
}
