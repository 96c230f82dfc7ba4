//! The files this node sends in a session: taken from the plan as it arrives, held until
//! `Go`, then handed to the shell, which turns them into sender jobs a few at a time. They
//! live as long as the session sends, so they are compact: a target's node id is an index
//! into the list's own names (20,000 files to four peers: not 80,000 copies of four names).

use crate::model::{FileMeta, NodeId, Version};
use crate::proto::SendTo;

struct Item {
    meta: FileMeta,
    /// (name, the version the target holds) per target.
    to: Box<[(u32, Option<Version>)]>,
}

/// `node`'s index in `names`, added at the end if it is new. Sessions name a handful of
/// nodes, so a linear search beats any map.
pub(super) fn intern(names: &mut Vec<NodeId>, node: &NodeId) -> u32 {
    match names.iter().position(|n| n == node) {
        Some(k) => k as u32,
        None => {
            names.push(node.clone());
            (names.len() - 1) as u32
        }
    }
}

/// A session's sends, in path order once sealed.
#[derive(Default)]
pub struct Sends {
    names: Vec<NodeId>,
    items: Vec<Item>,
}

impl Sends {
    pub(crate) fn push(&mut self, meta: FileMeta, to: Vec<SendTo>) {
        let to = to
            .into_iter()
            .map(|t| (intern(&mut self.names, &t.node), t.expect))
            .collect();
        self.items.push(Item { meta, to });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The files' bytes, each counted once however many receive it.
    pub fn bytes(&self) -> u64 {
        self.items.iter().map(|i| i.meta.size).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The plan is complete: path order, and false if a path is named twice.
    pub(super) fn seal(&mut self) -> bool {
        self.items.sort_by(|a, b| a.meta.path.cmp(&b.meta.path));
        self.items.shrink_to_fit();
        !self
            .items
            .windows(2)
            .any(|w| w[0].meta.path == w[1].meta.path)
    }

    /// Leaves `node` out of every send; returns how many targets that removed. A send left
    /// with no target is dropped.
    pub(super) fn drop_node(&mut self, node: &NodeId) -> usize {
        let Some(k) = self.names.iter().position(|n| n == node) else {
            return 0;
        };
        let k = k as u32;
        let mut lost = 0;
        for item in &mut self.items {
            if item.to.iter().any(|t| t.0 == k) {
                let before = item.to.len();
                item.to = item.to.iter().filter(|t| t.0 != k).copied().collect();
                lost += before - item.to.len();
            }
        }
        self.items.retain(|i| !i.to.is_empty());
        lost
    }
}

impl IntoIterator for Sends {
    type Item = (FileMeta, Vec<SendTo>);
    type IntoIter = IntoSends;

    fn into_iter(self) -> IntoSends {
        IntoSends {
            names: self.names,
            items: self.items.into_iter(),
        }
    }
}

/// The sends one by one, each with its targets as the protocol names them.
pub struct IntoSends {
    names: Vec<NodeId>,
    items: std::vec::IntoIter<Item>,
}

impl IntoSends {
    /// Nothing is left to hand out.
    pub fn is_empty(&self) -> bool {
        self.items.len() == 0
    }
}

impl Iterator for IntoSends {
    type Item = (FileMeta, Vec<SendTo>);

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.items.next()?;
        let to = item
            .to
            .iter()
            .map(|&(k, expect)| SendTo {
                node: self.names[k as usize].clone(),
                expect,
            })
            .collect();
        Some((item.meta, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RelPath;

    fn meta(p: &str) -> FileMeta {
        FileMeta::file(RelPath::new(p).unwrap(), 1, 0, 0o644)
    }

    fn to(nodes: &[&str]) -> Vec<SendTo> {
        nodes
            .iter()
            .map(|n| SendTo {
                node: NodeId::new(n).unwrap(),
                expect: None,
            })
            .collect()
    }

    #[test]
    fn sends_come_back_in_path_order_with_their_targets() {
        let mut s = Sends::default();
        s.push(meta("b"), to(&["x", "y"]));
        s.push(meta("a"), to(&["y"]));
        assert!(s.seal());
        let got: Vec<(String, Vec<String>)> = s
            .into_iter()
            .map(|(m, t)| {
                let t = t.into_iter().map(|t| t.node.as_str().to_owned()).collect();
                (m.path.as_str().to_owned(), t)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), vec!["y".to_owned()]),
                ("b".to_owned(), vec!["x".to_owned(), "y".to_owned()])
            ]
        );
    }

    #[test]
    fn a_path_twice_is_found_and_a_lost_node_is_left_out() {
        let mut s = Sends::default();
        s.push(meta("a"), to(&["x"]));
        s.push(meta("a"), to(&["y"]));
        assert!(!s.seal());
        let mut s = Sends::default();
        s.push(meta("a"), to(&["x"]));
        s.push(meta("b"), to(&["x", "y"]));
        assert_eq!(s.drop_node(&NodeId::new("x").unwrap()), 2);
        assert_eq!(s.len(), 1, "a send left with no target is dropped");
        assert_eq!(s.drop_node(&NodeId::new("z").unwrap()), 0);
    }
}
