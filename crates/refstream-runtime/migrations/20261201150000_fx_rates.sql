-- Exchange rates (`refstream fx set`): 1 base = rate quote, in force from effective_at. A
-- deposit in another currency than its campaign's is converted at the rate in force at its
-- time; the rate and its time are stamped on the reward it pays.
CREATE TABLE fx_rates (
    base         char(3) NOT NULL,
    quote        char(3) NOT NULL,
    rate         numeric(24, 10) NOT NULL CHECK (rate > 0),
    effective_at timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    recorded_by  text NOT NULL,
    PRIMARY KEY (base, quote, effective_at),
    CHECK (base <> quote)
);
ALTER TABLE rewards ADD COLUMN fx_rate numeric(24, 10);
ALTER TABLE rewards ADD COLUMN fx_rate_at timestamptz;
