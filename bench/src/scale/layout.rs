//! Where every socket lives: its node, its room, the node it flees to when
//! its own is killed, the hops of the resume tour, and how the sockets are
//! split over worker processes. Pure arithmetic, shared by the orchestrator
//! (to know what to expect) and the workers (to know what to do).

/// Auto `--procs`: one worker per this many sockets.
pub const SOCKETS_PER_PROC: u32 = 3000;
/// Most sockets one worker may hold: its fd limit must cover them with room
/// to spare for reconnects, which open a new socket before the old fd is gone.
pub const MAX_SOCKETS_PER_PROC: u32 = 4000;

/// The fixed shape of a run: socket `i` sits on node `i % nodes` and in room
/// `(i / nodes) % rooms`, so every room has members on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub nodes: u32,
    pub rooms: u32,
}

impl Layout {
    pub fn node_of(&self, i: u32) -> u32 {
        i % self.nodes
    }

    pub fn room_of(&self, i: u32) -> u32 {
        (i / self.nodes) % self.rooms
    }

    /// Sockets among `0..sockets` that are members of `room`.
    pub fn members(&self, sockets: u32, room: u32) -> u32 {
        (0..sockets).filter(|&i| self.room_of(i) == room).count() as u32
    }

    /// Sockets among `0..sockets` that start on `node`.
    pub fn on_node(&self, sockets: u32, node: u32) -> u32 {
        (0..sockets).filter(|&i| self.node_of(i) == node).count() as u32
    }

    /// The surviving node socket `i` reconnects to when `killed` dies. The
    /// victims of one node are `killed + k * nodes`, so picking by `k` spreads
    /// them evenly over the survivors instead of piling them on one.
    pub fn survivor(&self, i: u32, killed: u32) -> u32 {
        let others = self.nodes - 1;
        debug_assert!(others > 0, "a kill needs a second node");
        let pick = (i / self.nodes) % others;
        if pick < killed {
            pick
        } else {
            pick + 1
        }
    }

    /// The resume tour of a node-0 socket: every other node in order, then
    /// home, so the layout is whole again when it ends.
    pub fn hops(&self) -> impl Iterator<Item = u32> {
        (1..self.nodes).chain(std::iter::once(0))
    }
}

/// `room-{r}`: the name the server sees.
pub fn room_name(r: u32) -> String {
    format!("room-{r}")
}

/// Workers for `sockets` when `--procs` is 0.
pub fn auto_procs(sockets: u32) -> u32 {
    sockets
        .div_ceil(SOCKETS_PER_PROC)
        .max(2)
        .min(sockets.max(1))
}

/// Contiguous (first, count) ranges of global socket indices, one per worker,
/// sizes differing by at most one. Contiguous keeps every worker on every
/// node, since nodes alternate with the index.
pub fn split(sockets: u32, procs: u32) -> Vec<(u32, u32)> {
    let procs = procs.max(1);
    let base = sockets / procs;
    let extra = sockets % procs;
    let mut first = 0;
    (0..procs)
        .map(|w| {
            let count = base + u32::from(w < extra);
            let r = (first, count);
            first += count;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_cycle_over_nodes_and_rooms() {
        let l = Layout { nodes: 3, rooms: 8 };
        let placed: Vec<(u32, u32)> = (0..7).map(|i| (l.node_of(i), l.room_of(i))).collect();
        assert_eq!(
            placed,
            vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
        );
        // Room 0 wraps around after nodes * rooms sockets.
        assert_eq!((l.node_of(24), l.room_of(24)), (0, 0));
        // Every room has a member on every node.
        for r in 0..8 {
            let nodes: std::collections::BTreeSet<u32> = (0..48)
                .filter(|&i| l.room_of(i) == r)
                .map(|i| l.node_of(i))
                .collect();
            assert_eq!(nodes.len(), 3, "room {r}");
        }
        assert_eq!(l.members(48, 0), 6);
        assert_eq!(l.members(12_000, 0), 1500);
        assert_eq!(l.on_node(10, 0), 4);
        assert_eq!(l.on_node(10, 2), 3);
        assert_eq!(room_name(3), "room-3");
    }

    #[test]
    fn survivors_are_never_the_killed_node_and_share_the_load() {
        for nodes in 2..6u32 {
            let l = Layout { nodes, rooms: 1 };
            for killed in 0..nodes {
                let mut load = vec![0u32; nodes as usize];
                for i in (killed..600).step_by(nodes as usize) {
                    let s = l.survivor(i, killed);
                    assert_ne!(s, killed);
                    assert!(s < nodes);
                    load[s as usize] += 1;
                }
                let used: Vec<u32> = load.into_iter().filter(|&n| n > 0).collect();
                assert_eq!(used.len(), nodes as usize - 1);
                let (lo, hi) = (used.iter().min().unwrap(), used.iter().max().unwrap());
                assert!(hi - lo <= 1, "nodes {nodes} killed {killed}: {used:?}");
            }
        }
        // Deterministic: the same socket always flees to the same node.
        let l = Layout { nodes: 3, rooms: 8 };
        assert_eq!(
            (l.survivor(2, 2), l.survivor(5, 2), l.survivor(8, 2)),
            (0, 1, 0)
        );
        assert_eq!((l.survivor(0, 0), l.survivor(3, 0)), (1, 2));
    }

    #[test]
    fn the_tour_ends_at_home() {
        let l = Layout { nodes: 3, rooms: 1 };
        assert_eq!(l.hops().collect::<Vec<_>>(), vec![1, 2, 0]);
        let l = Layout { nodes: 2, rooms: 1 };
        assert_eq!(l.hops().collect::<Vec<_>>(), vec![1, 0]);
    }

    #[test]
    fn splits_cover_every_socket_once() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 2), vec![(0, 1), (1, 1)]);
        let s = split(12_000, 4);
        assert!(s.iter().all(|&(_, c)| c == 3000));
        assert_eq!(s.last().map(|&(f, c)| f + c), Some(12_000));
        assert_eq!(auto_procs(12_000), 4);
        assert_eq!(auto_procs(1500), 2);
        assert_eq!(auto_procs(9001), 4);
        assert_eq!(auto_procs(1), 1);
    }
}
