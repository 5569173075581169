//! Placement: which nodes hold each vnode, in which order (the chain table).
//!
//! The planner is deterministic: the same members and vnode count give the same table on every
//! node. It aims for:
//! - replicas and heads per node in proportion to the node's weight (its shard count), within
//!   a few percent;
//! - the replicas of a vnode on distinct nodes, and on distinct zones while there are enough
//!   zones;
//! - when the member list changes, the fewest replica moves: a replica stays where it is unless
//!   its node left or holds more than its share now. Adding a fourth node to three moves about
//!   a quarter of the replicas; heads are rebalanced by reordering chains, which moves no data.
//!
//! Every chain that changes (a member or its order) gets its epoch bumped; replicas reject
//! messages of any other epoch (`replication.rs`).
//!
//! How: targets per node are the largest-remainder rounding of `count * weight / total weight`.
//! A fresh plan fills vnodes one at a time with the nodes furthest below their targets (ties
//! broken by a hash of vnode and node, so that neighbours' chains differ). A re-plan first
//! empties the slots of departed nodes and takes replicas from nodes over their new target,
//! then fills every empty slot the same way. Heads are then balanced by swapping a chain's head
//! with another of its members.

use std::collections::BTreeMap;

/// A node's identity within a cluster (stable for the node's life).
pub type NodeId = u32;

/// A member as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// Relative capacity: the node's shard count.
    pub weight: u32,
    /// Failure domain, if the node declares one (`--zone`).
    pub zone: Option<String>,
}

/// One vnode's replicas, head first, and the epoch of this arrangement.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Chain {
    pub replicas: Vec<NodeId>,
    pub epoch: u64,
}

impl Chain {
    pub fn head(&self) -> NodeId {
        self.replicas[0]
    }

    pub fn tail(&self) -> NodeId {
        *self.replicas.last().expect("a chain has a replica")
    }

    /// Where `node` is in the chain, if it is in it.
    pub fn position(&self, node: NodeId) -> Option<usize> {
        self.replicas.iter().position(|&n| n == node)
    }

    /// The replica after `node`, if any.
    pub fn successor(&self, node: NodeId) -> Option<NodeId> {
        self.replicas.get(self.position(node)? + 1).copied()
    }

    /// The replica before `node`, if any.
    pub fn predecessor(&self, node: NodeId) -> Option<NodeId> {
        let position = self.position(node)?;
        position.checked_sub(1).map(|p| self.replicas[p])
    }
}

/// vnode -> chain, for every vnode of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTable {
    pub chains: Vec<Chain>,
}

impl ChainTable {
    pub fn chain(&self, vnode: u32) -> &Chain {
        &self.chains[vnode as usize]
    }

    pub fn vnodes(&self) -> u32 {
        self.chains.len() as u32
    }

    /// Replicas (all positions) per node.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for chain in &self.chains {
            for &node in &chain.replicas {
                *counts.entry(node).or_default() += 1;
            }
        }
        counts
    }

    /// Heads per node.
    pub fn head_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for chain in &self.chains {
            *counts.entry(chain.head()).or_default() += 1;
        }
        counts
    }

    /// (vnode, node) pairs in `other` that are not in `self`: the replicas a change moves.
    pub fn moved_replicas(&self, other: &ChainTable) -> usize {
        self.chains
            .iter()
            .zip(&other.chains)
            .map(|(old, new)| {
                new.replicas
                    .iter()
                    .filter(|n| !old.replicas.contains(n))
                    .count()
            })
            .sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("a cluster needs at least one member")]
    NoMembers,
    #[error("the replication factor must be at least 1")]
    NoReplicas,
    #[error("the vnode count must be between 1 and 65536, not {0}")]
    BadVnodeCount(u32),
    #[error("member {0} appears twice")]
    DuplicateMember(NodeId),
    #[error("member {0} has weight 0")]
    ZeroWeight(NodeId),
}

/// The plan's inputs, checked.
struct Plan<'a> {
    members: Vec<&'a Member>,
    /// Replicas per vnode: the replication factor, capped by the member count.
    width: usize,
    replica_targets: BTreeMap<NodeId, usize>,
    head_targets: BTreeMap<NodeId, usize>,
    distinct_zones: usize,
}

impl<'a> Plan<'a> {
    fn new(
        members: &'a [Member],
        vnodes: u32,
        replication_factor: usize,
    ) -> Result<Self, PlanError> {
        if members.is_empty() {
            return Err(PlanError::NoMembers);
        }
        if replication_factor == 0 {
            return Err(PlanError::NoReplicas);
        }
        if vnodes == 0 || vnodes > 65_536 {
            return Err(PlanError::BadVnodeCount(vnodes));
        }
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_by_key(|m| m.id);
        if let Some(pair) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlanError::DuplicateMember(pair[0].id));
        }
        if let Some(member) = sorted.iter().find(|m| m.weight == 0) {
            return Err(PlanError::ZeroWeight(member.id));
        }
        let width = replication_factor.min(sorted.len());
        let weights: Vec<(NodeId, u64)> =
            sorted.iter().map(|m| (m.id, u64::from(m.weight))).collect();
        let mut zones: Vec<Option<&str>> = sorted.iter().map(|m| m.zone.as_deref()).collect();
        zones.sort();
        zones.dedup();
        Ok(Plan {
            replica_targets: apportion_capped(vnodes as u64 * width as u64, &weights, vnodes),
            head_targets: apportion(u64::from(vnodes), &weights),
            members: sorted,
            width,
            distinct_zones: zones.len(),
        })
    }

    fn zone_of(&self, node: NodeId) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == node)
            .and_then(|m| m.zone.as_deref())
    }

    /// Whether `candidate` may join a chain holding `others`: a distinct node, and a zone not
    /// yet in the chain unless every zone already is.
    fn fits(&self, candidate: NodeId, others: &[NodeId]) -> bool {
        if others.contains(&candidate) {
            return false;
        }
        if self.distinct_zones <= 1 {
            return true;
        }
        let zone = self.zone_of(candidate);
        let used: Vec<Option<&str>> = others.iter().map(|&n| self.zone_of(n)).collect();
        let mut distinct_used = used.clone();
        distinct_used.sort();
        distinct_used.dedup();
        !used.contains(&zone) || distinct_used.len() >= self.distinct_zones
    }
}

/// Splits `total` among nodes by weight, rounding by largest remainder (ties to lower ids).
fn apportion(total: u64, weights: &[(NodeId, u64)]) -> BTreeMap<NodeId, usize> {
    let sum: u64 = weights.iter().map(|(_, w)| w).sum();
    let mut shares: Vec<(NodeId, u64, u64)> = weights
        .iter()
        .map(|&(id, w)| (id, total * w / sum, total * w % sum))
        .collect();
    let mut left = total - shares.iter().map(|s| s.1).sum::<u64>();
    let mut by_remainder: Vec<usize> = (0..shares.len()).collect();
    by_remainder.sort_by(|&a, &b| {
        shares[b]
            .2
            .cmp(&shares[a].2)
            .then(shares[a].0.cmp(&shares[b].0))
    });
    for index in by_remainder {
        if left == 0 {
            break;
        }
        shares[index].1 += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .map(|(id, n, _)| (id, n as usize))
        .collect()
}

/// `apportion`, with no node above `cap` (a node holds at most one replica of each vnode):
/// what a capped node cannot take is split among the others by weight.
fn apportion_capped(total: u64, weights: &[(NodeId, u64)], cap: u32) -> BTreeMap<NodeId, usize> {
    let cap = cap as usize;
    let mut fixed: BTreeMap<NodeId, usize> = BTreeMap::new();
    loop {
        let open: Vec<(NodeId, u64)> = weights
            .iter()
            .filter(|(id, _)| !fixed.contains_key(id))
            .copied()
            .collect();
        let left = total - fixed.values().sum::<usize>() as u64;
        if open.is_empty() {
            return fixed;
        }
        let shares = apportion(left, &open);
        let capped: Vec<NodeId> = shares
            .iter()
            .filter(|(_, &n)| n > cap)
            .map(|(&id, _)| id)
            .collect();
        if capped.is_empty() {
            fixed.extend(shares);
            return fixed;
        }
        fixed.extend(capped.into_iter().map(|id| (id, cap)));
    }
}

/// A stable mix of vnode and node, to break ties so that chains differ from vnode to vnode.
fn tie_break(vnode: u32, node: NodeId) -> u64 {
    let mut x = (u64::from(vnode) << 32 | u64::from(node)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// The chain table for a new cluster: every epoch is 1.
pub fn plan(
    members: &[Member],
    vnodes: u32,
    replication_factor: usize,
) -> Result<ChainTable, PlanError> {
    let empty = ChainTable {
        chains: vec![
            Chain {
                replicas: Vec::new(),
                epoch: 0,
            };
            vnodes as usize
        ],
    };
    replan(&empty, members, replication_factor)
}

/// The chain table after the members changed, moving as few replicas as it can. Chains that
/// change get `epoch + 1`; the others keep theirs.
pub fn replan(
    old: &ChainTable,
    members: &[Member],
    replication_factor: usize,
) -> Result<ChainTable, PlanError> {
    let plan = Plan::new(members, old.vnodes(), replication_factor)?;
    let mut slots: Vec<Vec<Option<NodeId>>> = old
        .chains
        .iter()
        .map(|chain| keep_members(&plan, chain))
        .collect();
    let mut counts = count(&slots);
    take_from_overfull(&plan, &mut slots, &mut counts);
    fill_empty(&plan, &mut slots, &mut counts);
    let mut replicas: Vec<Vec<NodeId>> = slots
        .into_iter()
        .map(|chain| chain.into_iter().flatten().collect())
        .collect();
    balance_heads(&plan, &mut replicas);
    Ok(ChainTable {
        chains: old
            .chains
            .iter()
            .zip(replicas)
            .map(|(old, replicas)| Chain {
                epoch: if old.replicas == replicas {
                    old.epoch
                } else {
                    old.epoch + 1
                },
                replicas,
            })
            .collect(),
    })
}

/// The old chain's members that are still members, at their positions, padded or cut to the
/// chain width; departed members leave empty slots.
fn keep_members(plan: &Plan<'_>, chain: &Chain) -> Vec<Option<NodeId>> {
    let mut kept: Vec<Option<NodeId>> = chain
        .replicas
        .iter()
        .map(|&n| plan.members.iter().any(|m| m.id == n).then_some(n))
        .collect();
    // A smaller replication factor drops the tail end; a larger one adds empty slots.
    kept.resize(plan.width, None);
    kept
}

fn count(slots: &[Vec<Option<NodeId>>]) -> BTreeMap<NodeId, usize> {
    let mut counts = BTreeMap::new();
    for &node in slots.iter().flatten().flatten() {
        *counts.entry(node).or_default() += 1;
    }
    counts
}

/// Empties slots of nodes above their target, in a stable pseudo-random order of vnodes.
fn take_from_overfull(
    plan: &Plan<'_>,
    slots: &mut [Vec<Option<NodeId>>],
    counts: &mut BTreeMap<NodeId, usize>,
) {
    for member in &plan.members {
        let target = plan.replica_targets[&member.id];
        let mut excess = counts
            .get(&member.id)
            .copied()
            .unwrap_or(0)
            .saturating_sub(target);
        if excess == 0 {
            continue;
        }
        let mut holding: Vec<usize> = (0..slots.len())
            .filter(|&v| slots[v].contains(&Some(member.id)))
            .collect();
        // Chains with no empty slot first: emptying two slots of one chain would let a filled
        // slot go back to a node that just gave one up, which moves data for nothing.
        holding.sort_by_key(|&v| (slots[v].contains(&None), tie_break(v as u32, member.id)));
        for vnode in holding {
            if excess == 0 {
                break;
            }
            let slot = slots[vnode]
                .iter()
                .position(|s| *s == Some(member.id))
                .expect("held");
            slots[vnode][slot] = None;
            *counts.get_mut(&member.id).expect("counted") -= 1;
            excess -= 1;
        }
    }
}

/// Fills every empty slot with the member furthest below its target that fits the chain.
fn fill_empty(
    plan: &Plan<'_>,
    slots: &mut [Vec<Option<NodeId>>],
    counts: &mut BTreeMap<NodeId, usize>,
) {
    for (vnode, chain) in slots.iter_mut().enumerate() {
        for slot in 0..chain.len() {
            if chain[slot].is_some() {
                continue;
            }
            let others: Vec<NodeId> = chain.iter().flatten().copied().collect();
            let best = plan
                .members
                .iter()
                .filter(|m| plan.fits(m.id, &others))
                .max_by_key(|m| {
                    let target = plan.replica_targets[&m.id] as i64;
                    let have = counts.get(&m.id).copied().unwrap_or(0) as i64;
                    // Deficit relative to the target (scaled, so weights compare), then ties.
                    (
                        (target - have) * 1_000_000 / target.max(1),
                        tie_break(vnode as u32, m.id),
                    )
                })
                .or_else(|| plan.members.iter().find(|m| !others.contains(&m.id)));
            if let Some(member) = best {
                chain[slot] = Some(member.id);
                *counts.entry(member.id).or_default() += 1;
            }
        }
    }
}

/// Moves heads toward each node's head target by swapping a chain's head with another of its
/// members: the data stays where it is.
fn balance_heads(plan: &Plan<'_>, chains: &mut [Vec<NodeId>]) {
    let mut heads: BTreeMap<NodeId, usize> = plan.members.iter().map(|m| (m.id, 0)).collect();
    for chain in chains.iter() {
        *heads.get_mut(&chain[0]).expect("a member") += 1;
    }
    let over =
        |heads: &BTreeMap<NodeId, usize>, node: NodeId| heads[&node] > plan.head_targets[&node];
    let under =
        |heads: &BTreeMap<NodeId, usize>, node: NodeId| heads[&node] < plan.head_targets[&node];
    let mut order: Vec<usize> = (0..chains.len()).collect();
    order.sort_by_key(|&v| tie_break(v as u32, u32::MAX));
    for vnode in order {
        let chain = &mut chains[vnode];
        let head = chain[0];
        if !over(&heads, head) {
            continue;
        }
        if let Some(position) = (1..chain.len()).find(|&p| under(&heads, chain[p])) {
            chain.swap(0, position);
            *heads.get_mut(&head).expect("a member") -= 1;
            *heads.get_mut(&chain[0]).expect("a member") += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Member {
                id: i as NodeId + 1,
                weight,
                zone: None,
            })
            .collect()
    }

    /// Largest relative distance of a node's count from its weighted share.
    fn imbalance(counts: &BTreeMap<NodeId, usize>, members: &[Member], total: usize) -> f64 {
        let weight_sum: u32 = members.iter().map(|m| m.weight).sum();
        members
            .iter()
            .map(|m| {
                let share = total as f64 * f64::from(m.weight) / f64::from(weight_sum);
                let have = counts.get(&m.id).copied().unwrap_or(0) as f64;
                (have - share).abs() / share
            })
            .fold(0.0, f64::max)
    }

    fn assert_valid(table: &ChainTable, width: usize) {
        for (vnode, chain) in table.chains.iter().enumerate() {
            assert_eq!(chain.replicas.len(), width, "vnode {vnode}");
            let mut distinct = chain.replicas.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), width, "vnode {vnode}: {:?}", chain.replicas);
        }
    }

    #[test]
    fn heads_and_replicas_are_balanced_by_weight() {
        for weights in [
            vec![1, 1, 1],
            vec![2, 2, 2, 2, 2],
            vec![1, 2, 4],
            vec![1, 1, 2, 4],
            vec![8; 10],
        ] {
            let members = members(&weights);
            let table = plan(&members, 4096, 3).unwrap();
            assert_valid(&table, 3.min(weights.len()));
            let heads = imbalance(&table.head_counts(), &members, 4096);
            // A node holds at most one replica per vnode: shares are capped at the vnode count
            // (with three members for three replicas, every node holds every vnode).
            let weighted: Vec<(NodeId, u64)> = members
                .iter()
                .map(|m| (m.id, u64::from(m.weight)))
                .collect();
            let targets = apportion_capped(4096 * 3, &weighted, 4096);
            for (node, have) in table.replica_counts() {
                let target = targets[&node] as f64;
                let off = (have as f64 - target).abs() / target;
                assert!(
                    off < 0.02,
                    "{weights:?}: node {node} has {have}, target {target}"
                );
            }
            assert!(heads < 0.03, "{weights:?}: heads off by {heads}");
        }
    }

    #[test]
    fn the_plan_is_deterministic_and_independent_of_member_order() {
        let mut members = members(&[1, 2, 3, 4]);
        let first = plan(&members, 1000, 3).unwrap();
        members.reverse();
        assert_eq!(plan(&members, 1000, 3).unwrap(), first);
        assert!(first.chains.iter().all(|c| c.epoch == 1));
    }

    #[test]
    fn replicas_spread_over_zones_while_there_are_enough() {
        let mut members = members(&[1; 6]);
        for (i, member) in members.iter_mut().enumerate() {
            member.zone = Some(format!("zone-{}", i % 3));
        }
        let table = plan(&members, 2048, 3).unwrap();
        for chain in &table.chains {
            let mut zones: Vec<_> = chain
                .replicas
                .iter()
                .map(|&n| members[n as usize - 1].zone.clone())
                .collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "{chain:?}");
        }
        // Two zones for three replicas: both zones in every chain, nodes still distinct.
        for member in members.iter_mut() {
            member.zone = Some(format!("zone-{}", member.id % 2));
        }
        let table = plan(&members, 2048, 3).unwrap();
        assert_valid(&table, 3);
        for chain in &table.chains {
            let zones: Vec<_> = chain.replicas.iter().map(|&n| n % 2).collect();
            assert!(zones.contains(&0) && zones.contains(&1), "{chain:?}");
        }
    }

    #[test]
    fn adding_a_fourth_node_moves_about_a_quarter_of_the_replicas() {
        let three = members(&[1, 1, 1]);
        let before = plan(&three, 4096, 3).unwrap();
        let four = members(&[1, 1, 1, 1]);
        let after = replan(&before, &four, 3).unwrap();
        assert_valid(&after, 3);
        let moved = before.moved_replicas(&after);
        let share = moved as f64 / (4096.0 * 3.0);
        assert!((0.24..0.27).contains(&share), "moved {share}");
        assert!(imbalance(&after.replica_counts(), &four, 4096 * 3) < 0.02);
        assert!(imbalance(&after.head_counts(), &four, 4096) < 0.03);
        // Unchanged chains keep their epoch; changed ones move to 2.
        for (old, new) in before.chains.iter().zip(&after.chains) {
            let expected = if old.replicas == new.replicas { 1 } else { 2 };
            assert_eq!(new.epoch, expected);
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_replicas() {
        let five = members(&[1; 5]);
        let before = plan(&five, 4096, 3).unwrap();
        let four: Vec<Member> = five.iter().filter(|m| m.id != 3).cloned().collect();
        let after = replan(&before, &four, 3).unwrap();
        assert_valid(&after, 3);
        let held_by_leaver = before.replica_counts()[&3];
        let moved = before.moved_replicas(&after);
        // Its replicas go somewhere; a few more may move to even the counts out.
        assert!(
            moved >= held_by_leaver && moved <= held_by_leaver * 11 / 10,
            "{moved} vs {held_by_leaver}"
        );
        assert!(after.chains.iter().all(|c| !c.replicas.contains(&3)));
        assert!(imbalance(&after.replica_counts(), &four, 4096 * 3) < 0.02);
    }

    #[test]
    fn a_cluster_smaller_than_the_factor_replicates_on_every_node() {
        let table = plan(&members(&[1, 1]), 64, 3).unwrap();
        assert_valid(&table, 2);
        let one = plan(&members(&[4]), 16, 3).unwrap();
        assert!(one.chains.iter().all(|c| c.replicas == vec![1]));
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(plan(&[], 16, 3), Err(PlanError::NoMembers));
        assert_eq!(plan(&members(&[1]), 16, 0), Err(PlanError::NoReplicas));
        assert_eq!(plan(&members(&[1]), 0, 3), Err(PlanError::BadVnodeCount(0)));
        assert_eq!(
            plan(&members(&[1]), 65_537, 3),
            Err(PlanError::BadVnodeCount(65_537))
        );
        assert_eq!(plan(&members(&[0]), 16, 3), Err(PlanError::ZeroWeight(1)));
        let mut twice = members(&[1, 1]);
        twice[1].id = 1;
        assert_eq!(plan(&twice, 16, 3), Err(PlanError::DuplicateMember(1)));
    }

    #[test]
    fn the_briefs_scale_plans_and_replans() {
        // 100 nodes of 16 shards, 25 600 vnodes (the brief's 256 per node), then one more node.
        let hundred = members(&[16; 100]);
        let table = plan(&hundred, 25_600, 3).unwrap();
        assert_valid(&table, 3);
        assert!(imbalance(&table.replica_counts(), &hundred, 25_600 * 3) < 0.02);
        let grown = members(&[16; 101]);
        let after = replan(&table, &grown, 3).unwrap();
        let share = table.moved_replicas(&after) as f64 / (25_600.0 * 3.0);
        assert!((0.009..0.012).contains(&share), "moved {share}");
    }

    #[test]
    fn chain_neighbours() {
        let chain = Chain {
            replicas: vec![4, 2, 9],
            epoch: 3,
        };
        assert_eq!((chain.head(), chain.tail()), (4, 9));
        assert_eq!(chain.successor(4), Some(2));
        assert_eq!(chain.successor(9), None);
        assert_eq!(chain.predecessor(2), Some(4));
        assert_eq!(chain.predecessor(4), None);
        assert_eq!(chain.position(7), None);
    }
}
