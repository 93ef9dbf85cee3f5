# test/t/003_resume_crash.pl — resuming across crashes and restarts (issue
# 4 §2 and §4; docs/protocol.md, "Snapshots and resuming"), on a cluster of
# its own: while writers write and subscribers (WebSocket JSON and
# MessagePack, SSE with Last-Event-ID, EventSource) receive,
#   1. kill -9 of the rtsub server worker (the postmaster crash-restarts
#      the whole cluster),
#   2. pg_ctl restart -m immediate,
#   3. pg_ctl restart -m fast;
# after each, every subscriber reconnects and resumes: zero lost, zero
# duplicated events against the committed rows, no reset, same epoch.
# Then DROP EXTENSION leaves no replication slot, and CREATE EXTENSION
# again gives a new epoch (resuming with the old one: reset
# epoch_changed).
#
# The clients are real ones (ws, @msgpack/msgpack, eventsource) in the node
# script t/_resume_crash.mjs, which prints one "ok - ..." / "not ok - ..."
# line per check; each becomes a test result here.
#
# Run by test/run (prove, PostgreSQL::Test::Cluster; TEMP_CONFIG is
# test/logical.conf, which preloads rtsub).
use strict;
use warnings;

use File::Basename qw(dirname);
use Cwd qw(abs_path);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $here = dirname(abs_path(__FILE__));
my $script = "$here/_resume_crash.mjs";
my $http_port = PostgreSQL::Test::Cluster::get_free_port();

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init(allows_streaming => 'logical');
$node->append_conf('postgresql.conf', qq{
rtsub.port = $http_port
rtsub.jwt_secret = 'rtsub-crash-test-secret-0123456789abcdef-0123456789'
restart_after_crash = on
max_connections = 60
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION rtsub');
is($node->safe_psql('postgres', 'SELECT rtsub.wait_until_running(20000)'),
	't', 'the rtsub server runs');

# run the node script in MODE against this cluster; each of its result
# lines becomes a test here
sub run_client
{
	my ($mode, $timeout) = @_;
	local $ENV{PGHOST} = $node->host;
	local $ENV{PGPORT} = $node->port;
	local $ENV{PGDATABASE} = 'postgres';
	local $ENV{PGUSER} = (getpwuid($<))[0];
	local $ENV{RTSUB_DATADIR} = $node->data_dir;
	local $ENV{RTSUB_SERVER_LOG} = $node->logfile;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start([ 'node', $script, $mode ],
		'>', \$out, '2>', \$err, IPC::Run::timeout($timeout));
	eval { $h->finish; };
	my $died = $@;
	$h->kill_kill if $died;
	my $results = 0;
	for my $line (split /\n/, $out)
	{
		if ($line =~ /^(not )?ok - (.*?)(?: # (.*))?$/)
		{
			my ($failed, $what, $detail) = ($1, $2, $3);
			ok(!$failed, $what) or diag($detail // '');
			$results++;
		}
		elsif ($line =~ /^# (.*)/)
		{
			note($1);
		}
	}
	ok(!$died && $results > 0, "$mode: the client script ran to the end")
	  or diag("died: $died; results: $results; stderr: $err");
	diag("stderr of $mode: $err") if $err =~ /\S/;
	return;
}

run_client('setup', 120);
run_client('kill9', 400);
run_client('immediate', 400);
run_client('fast', 400);
run_client('dropext', 200);

my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC/, 'no PANIC in the server log');
unlike($log, qr/rtsub server.*terminated by signal (?!9)/,
	'the rtsub server never crashed by itself (only the kill -9)');

$node->stop('fast');
done_testing();
