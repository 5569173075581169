//! A network of namespaces for partition tests: each node in a namespace of its own, joined by
//! a bridge in a "switch" namespace, and the test process (in the root namespace) on an uplink
//! to the same bridge, so that clients reach every node by its address.
//!
//! ```text
//!   root ns: tsPIDu 10.213.S.1 ──┐
//!   tsPIDn0: eth0 10.213.S.2  ───┤ br0 in tsPIDsw
//!   tsPIDn1: eth0 10.213.S.3  ───┤
//!   tsPIDn2: eth0 10.213.S.4  ───┘
//! ```
//!
//! A cut is an nftables table in the switch that drops every frame to or from one node's port
//! of the bridge: its packets vanish on the wire, as across a real partition (the node's own
//! sends leave without error, its peers' SYNs go unanswered), and no rule touches the machine's
//! own tables. Everything is deleted on drop; a run that died leaves names that the next run
//! with the same pid removes first.

use std::process::Command;

/// The namespaces, links and addresses of one test's network.
pub struct Netns {
    tag: String,
    subnet: u8,
    count: usize,
}

/// One /24 per test process, away from 10.213.0.0/24 and .255.
fn subnet() -> u8 {
    (std::process::id() % 250 + 3) as u8
}

/// Runs `ip ARGS...` (or any program) and fails the test, saying what failed, if it does.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (install iproute2 and nftables)"));
    assert!(
        output.status.success(),
        "{program} {} failed (network namespaces need root): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

impl Netns {
    /// Creates `count` node namespaces, the switch and the uplink.
    pub fn create(count: usize) -> Netns {
        let pid = std::process::id();
        let netns = Netns {
            tag: format!("ts{pid}"),
            subnet: subnet(),
            count,
        };
        netns.remove();
        let switch = netns.switch();
        run("ip", &["netns", "add", &switch]);
        run(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        for i in 0..count {
            netns.add_node(i);
        }
        let uplink = netns.uplink();
        netns.plug(&uplink);
        let address = format!("10.213.{}.1/24", netns.subnet);
        run("ip", &["addr", "add", &address, "dev", &uplink]);
        run("ip", &["link", "set", &uplink, "up"]);
        netns
    }

    fn switch(&self) -> String {
        format!("{}sw", self.tag)
    }

    fn uplink(&self) -> String {
        format!("{}u", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s end of the link, in its namespace (the other end, `..p`, is on the bridge).
    fn link(&self, i: usize) -> String {
        format!("{}e{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 2)
    }

    /// Node `i`'s address in the network this process makes (before it is made: certificates
    /// are made for it).
    pub fn planned_ip(i: usize) -> String {
        format!("10.213.{}.{}", subnet(), i + 2)
    }

    /// What runs a program in node `i`'s namespace (`ip netns exec` execs it: the child's pid
    /// is the program's).
    pub fn prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.namespace(i),
        ]
    }

    /// A veth `name` here, its peer `namep` on the bridge.
    fn plug(&self, name: &str) {
        let (switch, port) = (self.switch(), format!("{name}p"));
        run(
            "ip",
            &[
                "link", "add", name, "type", "veth", "peer", "name", &port, "netns", &switch,
            ],
        );
        run(
            "ip",
            &["-n", &switch, "link", "set", &port, "master", "br0", "up"],
        );
    }

    fn add_node(&self, i: usize) {
        let (namespace, link) = (self.namespace(i), self.link(i));
        run("ip", &["netns", "add", &namespace]);
        self.plug(&link);
        run("ip", &["link", "set", &link, "netns", &namespace]);
        let address = format!("{}/24", self.ip(i));
        run(
            "ip",
            &["-n", &namespace, "addr", "add", &address, "dev", &link],
        );
        run("ip", &["-n", &namespace, "link", "set", &link, "up"]);
        run("ip", &["-n", &namespace, "link", "set", "lo", "up"]);
    }

    /// Cuts node `i` off from every other node and from the test until the `Cut` is dropped.
    pub fn cut(&self, i: usize) -> Cut<'_> {
        let port = format!("{}p", self.link(i));
        let rules = format!(
            "table bridge tessera_cut {{\n\
               chain forward {{\n\
                 type filter hook forward priority 0; policy accept;\n\
                 iifname \"{port}\" drop\n\
                 oifname \"{port}\" drop\n\
               }}\n\
             }}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-cut.nft", self.tag));
        std::fs::write(&file, rules).unwrap();
        let switch = self.switch();
        run(
            "ip",
            &[
                "netns",
                "exec",
                &switch,
                "nft",
                "-f",
                file.to_str().unwrap(),
            ],
        );
        let _ = std::fs::remove_file(&file);
        Cut { netns: self }
    }

    /// Deletes what `create` made, as far as it exists.
    fn remove(&self) {
        quiet("ip", &["link", "del", &self.uplink()]);
        for i in 0..self.count {
            quiet("ip", &["netns", "del", &self.namespace(i)]);
        }
        quiet("ip", &["netns", "del", &self.switch()]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A node cut off by `Netns::cut`; healed on drop.
pub struct Cut<'a> {
    netns: &'a Netns,
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        let switch = self.netns.switch();
        quiet(
            "ip",
            &[
                "netns",
                "exec",
                &switch,
                "nft",
                "delete",
                "table",
                "bridge",
                "tessera_cut",
            ],
        );
    }
}
