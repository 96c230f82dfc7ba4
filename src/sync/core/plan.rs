//! Planning: the diff's operations turned, one at a time, into each node's part of the
//! plan, routed over the connections that exist, and the follower's checks on the plan it
//! receives. Pure.

use std::collections::HashSet;

use super::{Io, Violation};
use crate::diff::{self, Op};
use crate::model::{FileMeta, NodeId};
use crate::proto::{self, PlanItem, SendTo, SessionMsg};

/// A follower's checks on the plan it received: every path at most once per kind of item.
/// A node the plan names but this node is not (or no longer) connected to is not a
/// violation: a connection may drop after the leader planned; registering the plan deals
/// with such items.
pub(super) fn check_plan(items: &[PlanItem]) -> Result<(), Violation> {
    let mut seen = HashSet::new();
    for item in items {
        let (path, kind) = match item {
            PlanItem::Send { meta, to } => {
                if to.is_empty() {
                    return Err(Violation::PlanSendToNobody);
                }
                (&meta.path, 0)
            }
            PlanItem::Receive { meta, .. } => (&meta.path, 1),
            PlanItem::MakeDir { path, .. } => (path, 2),
        };
        if !seen.insert((path, kind)) {
            return Err(Violation::PlanPathTwice);
        }
    }
    Ok(())
}

/// [`Planner`] over a whole list of operations: what the tests compare.
#[cfg(test)]
pub fn plan_items(
    ops: &[Op],
    nodes: &[NodeId],
    linked: &dyn Fn(&NodeId, &NodeId) -> bool,
) -> Vec<Vec<PlanItem>> {
    let mut out: Vec<Vec<PlanItem>> = vec![Vec::new(); nodes.len()];
    let mut planner = Planner::new(nodes, linked);
    for op in ops {
        planner.add(op, &mut out);
    }
    out
}

/// Turns diff operations, one at a time, into each node's part, so a leader can send each
/// node's part in chunks while the diff is still running. `nodes[i]` is participant `i` of
/// the diff; `linked(a, b)` says whether `a` can send to `b`. For every copy, holders of the
/// winning version are tried in order of the bytes already assigned to them (spreading the
/// load, which carries over from one op to the next), each taking the targets it reaches; one
/// holder reads the file once for all its targets. Targets no holder reaches are left for a
/// later session. Pure.
pub struct Planner<'a> {
    nodes: &'a [NodeId],
    linked: &'a dyn Fn(&NodeId, &NodeId) -> bool,
    /// Bytes assigned to each node so far.
    load: Vec<u64>,
}

impl<'a> Planner<'a> {
    pub fn new(nodes: &'a [NodeId], linked: &'a dyn Fn(&NodeId, &NodeId) -> bool) -> Planner<'a> {
        Planner {
            nodes,
            linked,
            load: vec![0; nodes.len()],
        }
    }

    /// Appends what `op` asks of each node to `out[node]`.
    pub fn add(&mut self, op: &Op, out: &mut [Vec<PlanItem>]) {
        let (nodes, linked, load) = (self.nodes, self.linked, &mut self.load);
        match op {
            Op::MakeDir {
                path,
                mode,
                targets,
            } => {
                for &t in targets {
                    out[t].push(PlanItem::MakeDir {
                        path: path.clone(),
                        mode: *mode,
                    });
                }
            }
            Op::CopyFile {
                meta,
                sources,
                targets,
            } => {
                let mut left: Vec<&diff::Target> = targets.iter().collect();
                let mut holders = sources.clone();
                // Least loaded first; ties keep the diff's order (node id).
                holders.sort_by_key(|&h| load[h]);
                while !left.is_empty() {
                    // The holder reaching the most of what is left, least loaded on ties.
                    let best = holders
                        .iter()
                        .copied()
                        .map(|h| {
                            let reach = left
                                .iter()
                                .filter(|t| linked(&nodes[h], &nodes[t.node]))
                                .count();
                            (h, reach)
                        })
                        .filter(|&(_, reach)| reach > 0)
                        .max_by_key(|&(h, reach)| (reach, std::cmp::Reverse(load[h])));
                    let Some((h, _)) = best else { break };
                    let (mine, rest): (Vec<&diff::Target>, Vec<&diff::Target>) = left
                        .into_iter()
                        .partition(|t| linked(&nodes[h], &nodes[t.node]));
                    left = rest;
                    holders.retain(|&x| x != h);
                    load[h] += meta.size;
                    let version = |t: &diff::Target| t.current.as_ref().and_then(FileMeta::version);
                    out[h].push(PlanItem::Send {
                        meta: meta.clone(),
                        to: mine
                            .iter()
                            .map(|t| SendTo {
                                node: nodes[t.node].clone(),
                                expect: version(t),
                            })
                            .collect(),
                    });
                    for t in mine {
                        out[t.node].push(PlanItem::Receive {
                            meta: meta.clone(),
                            from: nodes[h].clone(),
                            expect: version(t),
                        });
                    }
                }
            }
        }
    }
}

/// Plan items a leader gathers for one remote node before sending them.
pub(super) const PLAN_FLUSH_ITEMS: usize = 1024;

/// Sends `items` to `node` as `PlanChunk` messages of at most [`BATCH_BYTES`] each.
pub(super) fn send_plan_chunks(io: &mut dyn Io, node: &NodeId, sid: u64, items: Vec<PlanItem>) {
    if items.is_empty() {
        return;
    }
    for chunk in proto::batches(items, proto::plan_item_len) {
        io.send(node, SessionMsg::PlanChunk { sid, items: chunk }.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::Target;
    use crate::model::{RelPath, Version};
    use crate::proto::BATCH_BYTES;

    fn n(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn full(_: &NodeId, _: &NodeId) -> bool {
        true
    }

    #[test]
    fn plan_items_split_ops_per_node_and_read_once_for_many_targets() {
        let meta = FileMeta::file(RelPath::new("f").unwrap(), 3, 9, 0o644);
        let old = FileMeta::file(RelPath::new("f").unwrap(), 1, 2, 0o644);
        let ops = vec![
            Op::MakeDir {
                path: RelPath::new("d").unwrap(),
                mode: 0o700,
                targets: vec![1],
            },
            Op::CopyFile {
                meta: meta.clone(),
                sources: vec![0],
                targets: vec![
                    Target {
                        node: 1,
                        current: Some(old),
                    },
                    Target {
                        node: 2,
                        current: None,
                    },
                ],
            },
        ];
        let parts = plan_items(&ops, &[n("a"), n("b"), n("c")], &full);
        assert_eq!(
            parts[0],
            vec![PlanItem::Send {
                meta: meta.clone(),
                to: vec![
                    SendTo {
                        node: n("b"),
                        expect: Some(Version {
                            size: 1,
                            mtime_ns: 2
                        })
                    },
                    SendTo {
                        node: n("c"),
                        expect: None
                    }
                ]
            }]
        );
        assert_eq!(
            parts[1],
            vec![
                PlanItem::MakeDir {
                    path: RelPath::new("d").unwrap(),
                    mode: 0o700
                },
                PlanItem::Receive {
                    meta: meta.clone(),
                    from: n("a"),
                    expect: Some(Version {
                        size: 1,
                        mtime_ns: 2
                    })
                }
            ]
        );
        assert_eq!(
            parts[2],
            vec![PlanItem::Receive {
                meta,
                from: n("a"),
                expect: None
            }]
        );
    }

    #[test]
    fn copies_are_spread_over_holders_and_routed_over_existing_links() {
        let f = |p: &str| FileMeta::file(RelPath::new(p).unwrap(), 100, 1, 0o644);
        let t = |node| Target {
            node,
            current: None,
        };
        // Nodes a, b hold both files; c lacks them. Two files: one each from a and b.
        let ops = vec![
            Op::CopyFile {
                meta: f("1"),
                sources: vec![0, 1],
                targets: vec![t(2)],
            },
            Op::CopyFile {
                meta: f("2"),
                sources: vec![0, 1],
                targets: vec![t(2)],
            },
        ];
        let nodes = [n("a"), n("b"), n("c")];
        let parts = plan_items(&ops, &nodes, &full);
        assert_eq!(parts[0].len(), 1, "{parts:?}");
        assert_eq!(parts[1].len(), 1, "{parts:?}");
        // b cannot reach c: everything comes from a.
        let no_bc = |x: &NodeId, y: &NodeId| {
            !((x.as_str() == "b" && y.as_str() == "c") || (x.as_str() == "c" && y.as_str() == "b"))
        };
        let parts = plan_items(&ops, &nodes, &no_bc);
        assert_eq!(parts[0].len(), 2, "{parts:?}");
        assert!(parts[1].is_empty());
        // Nobody reaches c: nothing is planned for it.
        let parts = plan_items(&ops, &nodes, &|x: &NodeId, y: &NodeId| {
            x.as_str() != "c" && y.as_str() != "c"
        });
        assert!(parts.iter().all(Vec::is_empty), "{parts:?}");
    }

    #[test]
    fn batches_respect_the_byte_budget() {
        let items: Vec<usize> = vec![100_000; 10];
        let b = proto::batches(items, |&n| n);
        assert!(b.iter().all(|c| c.iter().sum::<usize>() <= BATCH_BYTES));
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 10);
        let huge = proto::batches(vec![BATCH_BYTES * 2], |&n| n);
        assert_eq!(huge, vec![vec![BATCH_BYTES * 2]]);
    }
}
