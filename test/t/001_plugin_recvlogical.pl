# test/t/001_plugin_recvlogical.pl — the rtsub output plugin through the real
# pg_recvlogical binary (docs/output-plugin.md): JSON records, their keys and
# values, table filtering by rtsub.publish(), options, and continuing after
# a server restart without repeating changes.  Owned by the test harness.
#
# Run by test/run (prove, PostgreSQL::Test::Cluster; PG_REGRESS and PATH
# pointing into tmp_install).
use strict;
use warnings;

use JSON::PP;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init(allows_streaming => 'logical');
$node->append_conf(
	'postgresql.conf', q{
output_plugin_libraries = 'pgoutput, test_decoding, wal2json, rtsub'
max_replication_slots = 10
timezone = 'UTC'
});
$node->start;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION rtsub;
CREATE TABLE t (id int PRIMARY KEY, name text, price numeric(10,2),
                tags text[], meta jsonb, flag boolean);
CREATE TABLE u (id int PRIMARY KEY, v text);       -- not published
SELECT rtsub.publish('t');
});
$node->safe_psql('postgres',
	q{SELECT 1 FROM pg_create_logical_replication_slot('s', 'rtsub')});
$node->safe_psql('postgres',
	q{SELECT 1 FROM pg_create_logical_replication_slot('s_opts', 'rtsub')});

# LSN text -> number, for ordering
sub lsn_num
{
	my ($lsn) = @_;
	my ($hi, $lo) = split m{/}, $lsn;
	return hex($hi) * 2**32 + hex($lo);
}

# Run pg_recvlogical on slot $slot until $endpos (optionally from $startpos),
# with -o options; returns the output lines (one record each).
sub recvlogical
{
	my (%args) = @_;
	my @cmd = (
		$node->installed_command('pg_recvlogical'),
		'-d', $node->connstr('postgres'),
		'--slot', $args{slot},
		'--start', '--no-loop',
		'--endpos', $args{endpos},
		'-f', '-');
	push @cmd, '--startpos', $args{startpos} if defined $args{startpos};
	push @cmd, '-o', $_ for @{ $args{options} || ['format=json'] };

	my ($stdout, $stderr) = ('', '');
	my $timeout =
	  IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default);
	my $ok = eval {
		IPC::Run::run(\@cmd, '>', \$stdout, '2>', \$stderr, $timeout);
	};
	my $err = $@;
	note "pg_recvlogical: @cmd";
	note "stderr: $stderr" if $stderr ne '';
	if ($err || !$ok)
	{
		fail("pg_recvlogical on slot $args{slot} ran: "
			  . ($err ? "$err" : "exit status $?") . " stderr: $stderr");
		return ();
	}
	pass("pg_recvlogical on slot $args{slot} ran");
	return grep { $_ ne '' } split /\n/, $stdout;
}

# Decode the lines; one test per line.
sub decode_lines
{
	my @recs;
	for my $line (@_)
	{
		my $rec = eval { JSON::PP->new->decode($line) };
		ok(ref $rec eq 'HASH', "record is a JSON object: $line");
		push @recs, $rec if ref $rec eq 'HASH';
	}
	return @recs;
}

sub is_json_true  { JSON::PP::is_bool($_[0]) && $_[0] }

# ---------------------------------------------------------------- changes 1
$node->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO t VALUES (1, 'pen', 1.5, '{a,b}', '{"color": "red"}', true);
INSERT INTO u VALUES (1, 'unpublished');
INSERT INTO t (id) VALUES (2);
COMMIT;
UPDATE t SET name = 'pencil' WHERE id = 1;
DELETE FROM t WHERE id = 2;
INSERT INTO u VALUES (2, 'unpublished');
});
my $endpos1 = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');

my @lines1 = recvlogical(slot => 's', endpos => $endpos1);
is(scalar @lines1, 4, 'four records: 2 inserts, 1 update, 1 delete of t')
  or diag join "\n", @lines1;
my @r = decode_lines(@lines1);

# key order: lsn, pos, xid, ts, op come first, in that order
for my $i (0 .. $#lines1)
{
	my $line = $lines1[$i];
	my @at = map { index($line, qq{"$_":}) } qw(lsn pos xid ts op);
	ok( $line =~ /^\{"lsn":"/
		  && !(grep { $_ < 0 } @at)
		  && (join(',', @at) eq join(',', sort { $a <=> $b } @at)),
		"record $i: keys lsn, pos, xid, ts, op lead, in order");
	unlike($line, qr/^\s|\s$|\n/, "record $i: one line, no outer whitespace");
}

SKIP:
{
	skip 'not 4 records', 1 unless @r == 4;

	my ($i1, $i2, $u, $d) = @r;

	# common keys
	for my $k (0 .. 3)
	{
		my $rec = $r[$k];
		like($rec->{lsn}, qr{^[0-9A-F]+/[0-9A-F]+$}, "record $k: lsn is pg_lsn text");
		like($rec->{pos}, qr/^\d+$/, "record $k: pos is an integer >= 0");
		like($rec->{xid}, qr/^\d+$/, "record $k: xid is an integer");
		like($rec->{ts},
			qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?\+00:00$/,
			"record $k: ts is ISO 8601 UTC");
		is($rec->{schema}, 'public', "record $k: schema");
		is($rec->{table},  't',      "record $k: table (u is not published)");
		ok(lsn_num($rec->{lsn}) <= lsn_num($endpos1), "record $k: lsn <= endpos");
	}

	# insert 1
	is($i1->{op},  'I', 'first insert: op I');
	is($i1->{pos}, 0,   'first insert: pos 0');
	is_deeply(
		$i1->{new},
		{
			id    => 1,
			name  => 'pen',
			price => '1.50',
			tags  => '{a,b}',
			meta  => { color => 'red' },
			flag  => JSON::PP::true
		},
		'first insert: new row values');
	like($lines1[0], qr/"new":\{"id":1,"name":"pen","price":"1\.50","tags":"\{a,b\}","meta":\{"color": ?"red"\},"flag":true\}/,
		'first insert: new row in column order, numbers/strings/json/bool typed');
	ok(is_json_true($i1->{new}{flag}), 'boolean is a JSON true');
	ok(!exists $i1->{key} && !exists $i1->{old}, 'insert has no key/old');

	# insert 2: same transaction, next position (u's insert not counted)
	is($i2->{op},  'I',          'second insert: op I');
	is($i2->{lsn}, $i1->{lsn},   'same transaction: same lsn');
	is($i2->{xid}, $i1->{xid},   'same transaction: same xid');
	is($i2->{ts},  $i1->{ts},    'same transaction: same ts');
	is($i2->{pos}, 1,            'second insert: pos 1');
	is_deeply(
		$i2->{new},
		{
			id    => 2,
			name  => undef,
			price => undef,
			tags  => undef,
			meta  => undef,
			flag  => undef
		},
		'second insert: NULLs are null');

	# update that keeps its key: no key map
	is($u->{op},  'U', 'update: op U');
	is($u->{pos}, 0,   'update: pos 0 in its own transaction');
	ok(lsn_num($u->{lsn}) > lsn_num($i1->{lsn}), 'update: later lsn');
	isnt($u->{xid}, $i1->{xid}, 'update: another xid');
	is($u->{new}{name}, 'pencil', 'update: new name');
	is($u->{new}{id},   1,        'update: new has the key');
	is_deeply($u->{new}{meta}, { color => 'red' }, 'update: unchanged values present');
	ok(!exists $u->{key}, 'update keeping the key: no key');
	ok(!exists $u->{old}, 'update, replica identity default: no old');

	# delete: key only
	is($d->{op}, 'D', 'delete: op D');
	is_deeply($d->{key}, { id => 2 }, 'delete: key');
	ok(!exists $d->{new}, 'delete: no new');
	ok(!exists $d->{old}, 'delete, replica identity default: no old');
	ok(lsn_num($d->{lsn}) > lsn_num($u->{lsn}), 'delete: later lsn');
}

# ---------------------------------------------------------------- options
my @lines_opts = recvlogical(
	slot     => 's_opts',
	endpos   => $endpos1,
	options  => [
		'format=json', 'include_lsn=off', 'include_xid=0',
		'include_timestamp=false'
	]);
is(scalar @lines_opts, 4, 'options: same four records');
my @ro = decode_lines(@lines_opts);
for my $k (0 .. $#ro)
{
	ok( !exists $ro[$k]{lsn}
		  && !exists $ro[$k]{pos}
		  && !exists $ro[$k]{xid}
		  && !exists $ro[$k]{ts},
		"options: record $k has no lsn/pos/xid/ts");
	like($lines_opts[$k], qr/^\{"op":"/, "options: record $k starts with op");
}
$node->safe_psql('postgres', q{SELECT pg_drop_replication_slot('s_opts')});

# ---------------------------------------------------------------- restart
$node->restart;

$node->safe_psql(
	'postgres', q{
BEGIN;
INSERT INTO t (id, name) VALUES (3, 'three');
INSERT INTO t (id, name) VALUES (4, 'four');
COMMIT;
DELETE FROM t WHERE id = 1;
});
my $endpos2 = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');

# A walsender client keeps track of its own position (PostgreSQL 15 does
# not persist a slot's confirmed position on shutdown when only that
# moved), so restart from where the first run stopped.
my @lines2 =
  recvlogical(slot => 's', endpos => $endpos2, startpos => $endpos1);
is(scalar @lines2, 3, 'after restart: only the three new changes')
  or diag join "\n", @lines2;
my @r2 = decode_lines(@lines2);
is_deeply(
	[ map { [ $_->{op}, ($_->{new} || $_->{key})->{id} ] } @r2 ],
	[ [ 'I', 3 ], [ 'I', 4 ], [ 'D', 1 ] ],
	'after restart: new changes in commit order, no repeats');
if (@r2 == 3 && @r)
{
	my $max1 = 0;
	for (@r) { $max1 = lsn_num($_->{lsn}) if lsn_num($_->{lsn}) > $max1 }
	ok(!(grep { lsn_num($_->{lsn}) <= $max1 } @r2),
		'after restart: every lsn is past the first run');
	is_deeply([ map { $_->{pos} } @r2 ], [ 0, 1, 0 ], 'after restart: positions');
}

my $confirmed = $node->safe_psql('postgres',
	qq{SELECT confirmed_flush_lsn >= '$endpos2' FROM pg_replication_slots WHERE slot_name = 's'});
is($confirmed, 't', 'slot confirmed position advanced past the changes');

# nothing new: a run to the current position yields nothing
my $endpos3 = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
my @lines3 =
  recvlogical(slot => 's', endpos => $endpos3, startpos => $endpos2);
is(scalar @lines3, 0, 'no new changes: no records') or diag join "\n", @lines3;

$node->stop;
done_testing();
