//! Fraud rings: accounts joined by hard links (a shared device, payment instrument or
//! normalized email) form components; a component of enough accounts in which one account
//! referred another is a ring. Components do not depend on the order links were added: each is
//! named by its smallest account id, and every result here is ordered.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Disjoint sets of account ids (union-find). An id never linked is its own one-account
/// component.
#[derive(Debug, Clone, Default)]
pub struct Components {
    /// Position of each known id in the vectors below.
    index: HashMap<String, usize>,
    ids: Vec<String>,
    /// Parent position; a root is its own parent.
    parent: Vec<usize>,
    /// Accounts in the component, valid at roots.
    size: Vec<usize>,
    /// Position of the component's smallest id, valid at roots.
    smallest: Vec<usize>,
}

impl Components {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `id` as a known account (a one-account component unless already linked).
    pub fn add(&mut self, id: &str) {
        self.position_or_insert(id);
    }

    /// Puts `a` and `b` in the same component.
    pub fn link(&mut self, a: &str, b: &str) {
        let a = self.position_or_insert(a);
        let b = self.position_or_insert(b);
        let (root_a, root_b) = (self.root_compressing(a), self.root_compressing(b));
        if root_a == root_b {
            return;
        }
        // Union by size keeps trees shallow, so `find` needs no mutation.
        let (big, small) = if self.size[root_a] >= self.size[root_b] { (root_a, root_b) } else { (root_b, root_a) };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        if self.ids[self.smallest[small]] < self.ids[self.smallest[big]] {
            self.smallest[big] = self.smallest[small];
        }
    }

    /// The representative of `id`'s component: its smallest account id (`id` itself when it was
    /// never linked).
    pub fn find<'a>(&'a self, id: &'a str) -> &'a str {
        match self.index.get(id) {
            Some(&position) => &self.ids[self.smallest[self.root(position)]],
            None => id,
        }
    }

    /// True when `a` and `b` are in the same component.
    pub fn connected(&self, a: &str, b: &str) -> bool {
        self.find(a) == self.find(b)
    }

    /// Accounts in `id`'s component, `id` included (1 when it was never linked).
    pub fn size_of(&self, id: &str) -> usize {
        self.index.get(id).map_or(1, |&position| self.size[self.root(position)])
    }

    /// Every component with at least one known account: representative → members.
    pub fn groups(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        let mut groups: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for id in &self.ids {
            groups.entry(self.find(id)).or_default().insert(id);
        }
        groups
    }

    /// Number of known accounts.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn position_or_insert(&mut self, id: &str) -> usize {
        if let Some(&position) = self.index.get(id) {
            return position;
        }
        let position = self.ids.len();
        self.index.insert(id.to_owned(), position);
        self.ids.push(id.to_owned());
        self.parent.push(position);
        self.size.push(1);
        self.smallest.push(position);
        position
    }

    fn root(&self, mut position: usize) -> usize {
        while self.parent[position] != position {
            position = self.parent[position];
        }
        position
    }

    fn root_compressing(&mut self, position: usize) -> usize {
        let root = self.root(position);
        let mut current = position;
        while self.parent[current] != root {
            let next = self.parent[current];
            self.parent[current] = root;
            current = next;
        }
        root
    }
}

/// The accounts of every ring: builds components over `links` (pairs of accounts sharing a
/// device, payment instrument or normalized email) and returns the members of each component
/// of at least `min_size` accounts that contains a referral from `referrals` (referrer,
/// referee) whose two ends are both in it. Referrals never join components, and an account
/// that appears in no link is in no ring. The result is the same for any order of `links` and
/// `referrals`.
pub fn ring_members(links: &[(String, String)], referrals: &[(String, String)], min_size: usize) -> BTreeSet<String> {
    let mut components = Components::new();
    for (a, b) in links {
        components.link(a, b);
    }
    let ring_representatives: BTreeSet<&str> = referrals
        .iter()
        .filter(|(referrer, referee)| components.connected(referrer, referee))
        .map(|(referrer, _)| components.find(referrer))
        .filter(|representative| components.size_of(representative) >= min_size)
        .collect();
    components
        .groups()
        .into_iter()
        .filter(|(representative, _)| ring_representatives.contains(representative))
        .flat_map(|(_, members)| members.into_iter().map(str::to_owned))
        .collect()
}

/// What the scorer knows about one component of the link graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentSummary {
    /// Every account in the component, sorted.
    pub members: Vec<String>,
    /// Identifiers shared by two or more members, counted by kind.
    pub shared: BTreeMap<String, u32>,
    /// Referrals whose referrer and referee are both members.
    pub inner_referrals: u32,
    /// The component is a ring (see [`ring_members`]).
    pub is_ring: bool,
}

/// The components of a set of accounts, summarized: built from `groups` (for each shared
/// identifier, its kind and the accounts that share it) and the `referrals` among them. Every
/// account of `accounts` has a summary, a one-account component when it shares nothing.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    components: Components,
    summaries: BTreeMap<String, ComponentSummary>,
}

impl Graph {
    /// Builds the graph. The result does not depend on the order of any input.
    pub fn build(accounts: &[String], groups: &[(String, Vec<String>)], referrals: &[(String, String)], min_size: usize) -> Self {
        let mut components = Components::new();
        for account in accounts {
            components.add(account);
        }
        let mut links = Vec::new();
        for (_, users) in groups {
            // A star per identifier connects its users as well as every pair would.
            for other in users.iter().skip(1) {
                components.link(&users[0], other);
                links.push((users[0].clone(), other.clone()));
            }
        }
        let rings = ring_members(&links, referrals, min_size);
        let mut summaries: BTreeMap<String, ComponentSummary> = BTreeMap::new();
        for (representative, members) in components.groups() {
            let is_ring = rings.contains(representative);
            summaries.insert(
                representative.to_owned(),
                ComponentSummary { members: members.iter().map(|m| (*m).to_owned()).collect(), is_ring, ..ComponentSummary::default() },
            );
        }
        for (kind, users) in groups {
            if let Some(s) = users.first().and_then(|u| summaries.get_mut(components.find(u))) {
                *s.shared.entry(kind.clone()).or_default() += 1;
            }
        }
        for (referrer, referee) in referrals {
            if components.connected(referrer, referee) {
                if let Some(s) = summaries.get_mut(components.find(referrer)) {
                    s.inner_referrals += 1;
                }
            }
        }
        Self { components, summaries }
    }

    /// The summary of `account`'s component (a one-account component when it is unknown).
    pub fn of(&self, account: &str) -> ComponentSummary {
        self.summaries
            .get(self.components.find(account))
            .cloned()
            .unwrap_or_else(|| ComponentSummary { members: vec![account.to_owned()], ..ComponentSummary::default() })
    }

    /// Every ring's summary.
    pub fn rings(&self) -> impl Iterator<Item = &ComponentSummary> {
        self.summaries.values().filter(|s| s.is_ring)
    }

    /// The representative of `account`'s component.
    pub fn representative<'a>(&'a self, account: &'a str) -> &'a str {
        self.components.find(account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    fn set(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn unknown_ids_are_singletons() {
        let c = Components::new();
        assert_eq!(c.find("x"), "x");
        assert_eq!(c.size_of("x"), 1);
        assert!(!c.connected("x", "y"));
        assert!(c.is_empty());
    }

    #[test]
    fn links_merge_and_the_smallest_id_represents() {
        let mut c = Components::new();
        c.link("d", "c");
        c.link("e", "d");
        c.link("b", "a");
        assert_eq!(c.find("e"), "c");
        assert_eq!(c.size_of("e"), 3);
        assert_eq!(c.find("b"), "a");
        c.link("e", "b");
        for id in ["a", "b", "c", "d", "e"] {
            assert_eq!(c.find(id), "a");
            assert_eq!(c.size_of(id), 5);
        }
        c.link("a", "e");
        c.link("z", "z");
        assert_eq!(c.size_of("a"), 5);
        assert_eq!(c.size_of("z"), 1);
        assert_eq!(c.len(), 6);
        assert_eq!(c.groups().keys().copied().collect::<Vec<_>>(), ["a", "z"]);
    }

    #[test]
    fn a_linked_component_with_an_inner_referral_is_a_ring() {
        let links = pairs(&[("u1", "u2"), ("u2", "u3"), ("v1", "v2"), ("v2", "v3")]);
        // u1 referred u3 inside its component; the v component only refers outwards.
        let referrals = pairs(&[("u1", "u3"), ("v1", "w9")]);
        assert_eq!(ring_members(&links, &referrals, 3), set(&["u1", "u2", "u3"]));
    }

    #[test]
    fn components_below_min_size_are_not_rings() {
        let links = pairs(&[("u1", "u2")]);
        let referrals = pairs(&[("u1", "u2")]);
        assert!(ring_members(&links, &referrals, 3).is_empty());
        assert_eq!(ring_members(&links, &referrals, 2), set(&["u1", "u2"]));
    }

    #[test]
    fn referrals_do_not_join_components() {
        let links = pairs(&[("a", "b"), ("c", "d")]);
        let referrals = pairs(&[("b", "c"), ("a", "d")]);
        assert!(ring_members(&links, &referrals, 2).is_empty());
    }

    #[test]
    fn accounts_in_no_link_are_in_no_ring() {
        let referrals = pairs(&[("loner", "loner")]);
        assert!(ring_members(&[], &referrals, 1).is_empty());
        let links = pairs(&[("loner", "loner")]);
        assert_eq!(ring_members(&links, &referrals, 1), set(&["loner"]));
    }

    #[test]
    fn a_graph_summarizes_each_component_once() {
        let accounts: Vec<String> = ["a", "b", "c", "d", "lone"].iter().map(|s| (*s).to_owned()).collect();
        let groups = vec![
            ("device".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ("email".to_owned(), vec!["b".to_owned(), "c".to_owned()]),
            ("payment".to_owned(), vec!["d".to_owned(), "e".to_owned()]),
        ];
        let referrals = pairs(&[("a", "c"), ("d", "lone")]);
        let g = Graph::build(&accounts, &groups, &referrals, 3);
        let ring = g.of("c");
        assert_eq!(ring.members, ["a", "b", "c"]);
        assert!(ring.is_ring);
        assert_eq!(ring.inner_referrals, 1);
        assert_eq!(ring.shared.get("device"), Some(&1));
        assert_eq!(ring.shared.get("email"), Some(&1));
        let pair = g.of("e");
        assert_eq!((pair.members.len(), pair.is_ring, pair.inner_referrals), (2, false, 0));
        assert_eq!(g.of("lone").members, ["lone"]);
        assert_eq!(g.of("never-seen").members, ["never-seen"]);
        assert_eq!(g.rings().count(), 1);
        assert_eq!(g.representative("c"), "a");
    }

    fn id() -> impl Strategy<Value = String> {
        (0u8..8).prop_map(|n| format!("acct-{n}"))
    }

    fn edges(max: usize) -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((id(), id()), 0..max)
    }

    proptest! {
        #[test]
        fn ring_members_ignore_the_order_of_links_and_referrals(
            (links, shuffled_links) in edges(14).prop_flat_map(|l| (Just(l.clone()), Just(l).prop_shuffle())),
            (referrals, shuffled_referrals) in edges(8).prop_flat_map(|r| (Just(r.clone()), Just(r).prop_shuffle())),
            flip in any::<bool>(),
            min_size in 0usize..6,
        ) {
            // Also swap the two ends of every link: a link has no direction.
            let shuffled_links: Vec<_> = if flip {
                shuffled_links.into_iter().map(|(a, b)| (b, a)).collect()
            } else {
                shuffled_links
            };
            prop_assert_eq!(
                ring_members(&links, &referrals, min_size),
                ring_members(&shuffled_links, &shuffled_referrals, min_size)
            );
        }

        #[test]
        fn representative_is_the_smallest_member_whatever_the_order(
            (links, shuffled) in edges(14).prop_flat_map(|l| (Just(l.clone()), Just(l).prop_shuffle())),
        ) {
            let build = |links: &[(String, String)]| {
                let mut c = Components::new();
                for (a, b) in links {
                    c.link(a, b);
                }
                c
            };
            let (first, second) = (build(&links), build(&shuffled));
            for (representative, members) in first.groups() {
                prop_assert_eq!(Some(&representative), members.iter().next());
                prop_assert_eq!(members.len(), first.size_of(representative));
                for member in members {
                    prop_assert_eq!(first.find(member), second.find(member));
                }
            }
        }
        #[test]
        fn graph_rings_are_ring_members(
            links in edges(14),
            referrals in edges(8),
            min_size in 2usize..6,
        ) {
            let groups: Vec<(String, Vec<String>)> = links.iter().map(|(a, b)| ("device".to_owned(), vec![a.clone(), b.clone()])).collect();
            let accounts: Vec<String> = (0u8..8).map(|n| format!("acct-{n}")).collect();
            let g = Graph::build(&accounts, &groups, &referrals, min_size);
            let expected = ring_members(&links, &referrals, min_size);
            for account in &accounts {
                prop_assert_eq!(g.of(account).is_ring, expected.contains(account), "{}", account);
                prop_assert!(g.of(account).members.contains(account));
            }
        }
    }
}
