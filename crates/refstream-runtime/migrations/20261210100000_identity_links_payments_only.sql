-- The ring graph's device and mailbox links are read where they already are, in `users`,
-- instead of being copied into identity_links by the scorer (two rows and four index
-- insertions for every account it met). An account's device and mailbox link it once the scorer
-- has met it: it is the referee or the referrer of an assessed referral, and the batch that
-- wrote that first assessment is the one that copied them before, in the same transaction. So
-- the graph the scorer walks is the same, still only what it has read, and every device and
-- email row removed here is one the scorer finds again through the assessment of its account.
--
-- identity_links keeps the payment instruments: those come from deposits, not from `users`.
DELETE FROM identity_links WHERE kind <> 'payment';
ALTER TABLE identity_links DROP CONSTRAINT identity_links_kind_check;
ALTER TABLE identity_links ADD CONSTRAINT identity_links_kind_check CHECK (kind = 'payment');
COMMENT ON TABLE identity_links IS
    'The payment instruments of the ring graph: (payment, fingerprint, user) for every card the scorer read in a deposit. Device and mailbox links are read from users for the accounts the scorer has met (since 20261210100000).';
