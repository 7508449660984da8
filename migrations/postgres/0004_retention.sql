-- Retention deletes the audit trail by age.
CREATE INDEX repairs_at ON repairs (at);
