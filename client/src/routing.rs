//! Where each request goes, from a node's TOPOLOGY answer (sans-IO: no sockets, no clock).
//!
//! A node that is not in a cluster is one member holding every vnode; its shards split the
//! vnodes by its table. In a cluster, vnode v's chain (head first) is in the table, and member
//! m's shard for v follows from m's shard count (`placement::shard_of_vnode`, the rule every
//! node uses). Ports: member m serves clients on its address (any shard) and on
//! `port + 1 + i` (shard i); the answering node says its own base, others follow the rule.
//!
//! Which replica a request goes to:
//! - writes go to the head (another replica answers MOVED);
//! - reads at every level go to any replica, rotating: an `eventual` read is answered at once,
//!   a `session` read once that replica has the session's writes, a `strong` read once the
//!   key's newest write there is committed (CRAQ's clean reads), so spreading reads over the
//!   chain costs no consistency.

use std::net::SocketAddr;

use tessera_schema::msg::{Level, Token, Topology};
use tessera_schema::placement::{shard_of_vnode, vnode_of, MAX_VNODES};

/// A node's view of the cluster, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    topology: Topology,
    /// Client address of each member (one, the answering node, when not in a cluster).
    addrs: Vec<SocketAddr>,
}

/// Where one request goes: a member, and the shard port to use (`None`: its main port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub member: usize,
    pub shard: Option<u16>,
}

impl Routing {
    /// Checks `topology` as told by the node at `answered_by`.
    pub fn new(topology: Topology, answered_by: SocketAddr) -> Result<Routing, String> {
        let vnodes = topology.vnode_shard.len();
        if topology.shard_count == 0
            || !(1..=MAX_VNODES as usize).contains(&vnodes)
            || topology
                .vnode_shard
                .iter()
                .any(|&s| s >= topology.shard_count)
        {
            return Err("the node's vnode table is inconsistent".into());
        }
        if topology.cluster_id == 0 {
            return Ok(Routing {
                topology,
                addrs: vec![answered_by],
            });
        }
        let members = topology.members.len();
        let width = usize::from(topology.chain_width);
        let consistent = members > 0
            && (topology.node_id as usize) < members
            && width > 0
            && topology.chain_replicas.len() == vnodes * width
            && topology.chain_epochs.len() == vnodes
            && topology
                .chain_replicas
                .iter()
                .all(|&m| (m as usize) < members)
            && topology.members.iter().all(|m| m.shard_count > 0);
        if !consistent {
            return Err("the node's chain table is inconsistent".into());
        }
        let addrs = topology
            .members
            .iter()
            .map(|m| {
                m.addr
                    .parse()
                    .map_err(|_| format!("member address {:?} is not HOST:PORT", m.addr))
            })
            .collect::<Result<Vec<SocketAddr>, String>>()?;
        Ok(Routing { topology, addrs })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn is_cluster(&self) -> bool {
        self.topology.cluster_id != 0
    }

    pub fn cluster_id(&self) -> u64 {
        self.topology.cluster_id
    }

    /// The cluster's vnode count.
    pub fn vnodes(&self) -> u32 {
        self.topology.vnode_shard.len() as u32
    }

    pub fn vnode_of(&self, key: &[u8]) -> u16 {
        vnode_of(key, self.vnodes())
    }

    /// Members (1 when not in a cluster).
    pub fn member_count(&self) -> usize {
        self.addrs.len()
    }

    /// The member that answered TOPOLOGY.
    pub fn answering_member(&self) -> usize {
        self.topology.node_id as usize
    }

    pub fn addr(&self, member: usize) -> SocketAddr {
        self.addrs[member]
    }

    pub fn shard_count(&self, member: usize) -> u16 {
        match self.topology.members.get(member) {
            Some(info) => info.shard_count,
            None => self.topology.shard_count,
        }
    }

    /// The address of `member`'s shard `shard`.
    pub fn shard_addr(&self, member: usize, shard: u16) -> SocketAddr {
        let addr = self.addrs[member];
        let base = if member == self.answering_member() {
            self.topology.shard_port_base
        } else {
            addr.port() + 1
        };
        SocketAddr::new(addr.ip(), base + shard)
    }

    /// The replicas of `vnode`, head first.
    pub fn replicas(&self, vnode: u16) -> Vec<usize> {
        if !self.is_cluster() {
            return vec![0];
        }
        self.topology
            .chain(vnode)
            .iter()
            .map(|&m| m as usize)
            .collect()
    }

    /// The chain epoch of `vnode` (0 when not in a cluster).
    pub fn epoch(&self, vnode: u16) -> u64 {
        self.topology
            .chain_epochs
            .get(usize::from(vnode))
            .copied()
            .unwrap_or(0)
    }

    /// `member`'s shard that holds `vnode`.
    pub fn shard_on(&self, member: usize, vnode: u16) -> u16 {
        if !self.is_cluster() || member == self.answering_member() {
            return self.topology.vnode_shard[usize::from(vnode)];
        }
        shard_of_vnode(vnode, self.shard_count(member), self.vnodes())
    }

    /// The shard of the answering node that owns `key` (a node not in a cluster: the shard).
    pub fn shard_of(&self, key: &[u8]) -> u16 {
        self.topology.vnode_shard[usize::from(self.vnode_of(key))]
    }

    /// Where an operation on `vnode` goes: a write to the head, a read to the replica `spread`
    /// picks (any number; successive ones rotate over the chain).
    pub fn target(&self, vnode: u16, write: bool, spread: usize, shard_aware: bool) -> Target {
        let replicas = self.replicas(vnode);
        let member = if write {
            replicas[0]
        } else {
            replicas[spread % replicas.len()]
        };
        Target {
            member,
            shard: shard_aware.then(|| self.shard_on(member, vnode)),
        }
    }
}

/// The session tokens a client handle holds: per vnode, the newest (epoch, seq) it wrote or
/// read. A `session` read sends its vnode's token; the replica answers once it has applied it.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_vnode: std::collections::HashMap<u16, Token>,
}

impl Tokens {
    /// Keeps `token` if it is newer than what is held for its vnode.
    pub fn observe(&mut self, token: Token) {
        if token.seq == 0 {
            return;
        }
        let held = self.by_vnode.entry(token.vnode).or_insert(token);
        if (token.epoch, token.seq) > (held.epoch, held.seq) {
            *held = token;
        }
    }

    /// The tokens a request at `level` touching `vnodes` carries.
    pub fn for_request(&self, level: Level, vnodes: impl IntoIterator<Item = u16>) -> Vec<Token> {
        if level != Level::Session {
            return Vec::new();
        }
        let mut tokens: Vec<Token> = vnodes
            .into_iter()
            .filter_map(|v| self.by_vnode.get(&v).copied())
            .collect();
        tokens.sort_by_key(|t| t.vnode);
        tokens.dedup();
        tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_schema::msg::MemberInfo;
    use tessera_schema::placement::shard_table;

    fn single() -> Routing {
        let topology = Topology {
            shard_count: 4,
            shard_port_base: 7001,
            vnode_shard: shard_table(4, 4096),
            ..Topology::default()
        };
        Routing::new(topology, "127.0.0.1:7000".parse().unwrap()).unwrap()
    }

    fn cluster() -> Routing {
        let vnodes = 64u32;
        let members = (0..3)
            .map(|i| MemberInfo {
                id: i,
                addr: format!("127.0.0.1:{}", 17000 + 100 * i),
                shard_count: (i + 1) as u16,
                zone: String::new(),
            })
            .collect();
        let chain_replicas = (0..vnodes)
            .flat_map(|v| [(v % 3), (v + 1) % 3, (v + 2) % 3])
            .collect();
        let topology = Topology {
            shard_count: 2,
            shard_port_base: 17101,
            vnode_shard: shard_table(2, vnodes),
            cluster_id: 9,
            node_id: 1,
            members,
            chain_width: 3,
            chain_replicas,
            chain_epochs: vec![1; vnodes as usize],
        };
        Routing::new(topology, "127.0.0.1:17100".parse().unwrap()).unwrap()
    }

    #[test]
    fn a_single_node_routes_by_its_table() {
        let routing = single();
        let key = b"user:42";
        let vnode = routing.vnode_of(key);
        assert_eq!(
            routing.shard_of(key),
            shard_table(4, 4096)[usize::from(vnode)]
        );
        assert_eq!(routing.replicas(vnode), vec![0]);
        assert_eq!(routing.shard_addr(0, 3).port(), 7004);
        let target = routing.target(vnode, false, 5, true);
        assert_eq!(target.member, 0);
        assert_eq!(target.shard, Some(routing.shard_of(key)));
    }

    #[test]
    fn a_cluster_writes_to_heads_and_spreads_reads() {
        let routing = cluster();
        assert!(routing.is_cluster());
        for vnode in 0..64u16 {
            let head = usize::from(vnode % 3);
            assert_eq!(routing.target(vnode, true, 7, false).member, head);
            let readers: std::collections::BTreeSet<usize> = (0..3)
                .map(|spread| routing.target(vnode, false, spread, false).member)
                .collect();
            assert_eq!(readers.len(), 3, "reads rotate over the chain");
        }
        // Member 2 has 3 shards: its ports follow the rule; member 1 answered with its base.
        assert_eq!(routing.shard_addr(2, 2).port(), 17203);
        assert_eq!(routing.shard_addr(1, 1).port(), 17102);
        assert_eq!(routing.shard_on(2, 63), 2);
        assert_eq!(routing.shard_on(0, 63), 0);
    }

    #[test]
    fn inconsistent_tables_are_refused() {
        let mut topology = cluster().topology().clone();
        topology.chain_replicas[5] = 3;
        assert!(Routing::new(topology, "127.0.0.1:1".parse().unwrap()).is_err());
        let mut topology = cluster().topology().clone();
        topology.chain_epochs.pop();
        assert!(Routing::new(topology, "127.0.0.1:1".parse().unwrap()).is_err());
        let topology = Topology {
            shard_count: 1,
            shard_port_base: 1,
            vnode_shard: vec![],
            ..Topology::default()
        };
        assert!(Routing::new(topology, "127.0.0.1:1".parse().unwrap()).is_err());
    }

    #[test]
    fn tokens_keep_the_newest_and_travel_only_with_session_requests() {
        let mut tokens = Tokens::default();
        let token = |vnode, epoch, seq| Token { vnode, epoch, seq };
        tokens.observe(token(3, 1, 10));
        tokens.observe(token(3, 1, 7));
        tokens.observe(token(4, 1, 0));
        assert_eq!(
            tokens.for_request(Level::Session, [3, 4, 3]),
            vec![token(3, 1, 10)]
        );
        tokens.observe(token(3, 2, 1));
        assert_eq!(
            tokens.for_request(Level::Session, [3]),
            vec![token(3, 2, 1)]
        );
        assert!(tokens.for_request(Level::Strong, [3]).is_empty());
    }
}
