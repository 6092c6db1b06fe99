# What launch.pl and container.pl share: reading the assignment, joining the cgroups, loopback, and
# the end of the chain (drop privileges, seccomp, exec; stay PID 1 and reap). Both `require` it at
# compile time, before anything is mounted over the dir it lives in. Same rules as theirs: plain
# syscalls, no modules, no `use strict; use warnings;` (the unit test checks it with both).
# The caller sets $WHO (how failures name it) and passes the syscall numbers to syscall_numbers.

our $WHO = 'aether sandbox';
our ($SYS_mount, $SYS_setgroups, $SYS_setresgid, $SYS_setresuid, $SYS_prctl);

sub fail { print STDERR "$WHO: $_[0]: $!\n"; exit 125; }

# The reaper PID 1 becomes once the program runs (aether-init --reap, built by `npm run build:guest`;
# ~0.1 MiB where a resident perl costs ~5 MiB per instance). Opened now, before mounts may hide the
# checkout; without it perl stays PID 1 and reaps itself.
our $REAPER;
{
  my $d = __FILE__ =~ m{^(.*)/} ? $1 : '.';
  my $fh;
  $REAPER = $fh if sysopen($fh, "$d/../../../../build/guest/aether-init", 0);
}

# The whole assignment, NUL-separated until EOF (blocks here while a spare). stdin is /dev/null after.
sub read_assignment {
  my @in;
  {
    local $/;
    my $raw = <STDIN> // '';
    @in = split /\0/, $raw;
  }
  open(STDIN, '<', '/dev/null') or fail('stdin');
  return @in;
}

# "mount,setgroups,setresgid,setresuid,prctl[,more]": sets the five shared ones, returns the rest.
sub syscall_numbers {
  my @n = map { $_ + 0 } split /,/, $_[0];
  ($SYS_mount, $SYS_setgroups, $SYS_setresgid, $SYS_setresuid, $SYS_prctl) = splice(@n, 0, 5);
  return @n;
}

# struct sock_fprog { unsigned short len; struct sock_filter *filter; } (8 bytes per instruction),
# from the filter's hex. The packed pointer refers to $INSNS, which lives until exec.
our $INSNS;
sub seccomp_prog {
  $INSNS = pack('H*', $_[0]);
  fail('bad seccomp filter') unless length($INSNS) && length($INSNS) % 8 == 0;
  return pack('S x![P] P', length($INSNS) / 8, $INSNS);
}

# The program's environment from its K=V records.
sub env_of {
  my %env;
  for my $kv (@_) {
    my ($k, $v) = split /=/, $kv, 2;
    $env{$k} = $v if defined $v && length $k;
  }
  return \%env;
}

# Write "0" (the writing thread) to each cgroup's `tasks`. `tasks`, not `cgroup.procs`: moving one
# thread skips the kernel's global threadgroup lock (an RCU grace period, ~10 ms); perl is
# single-threaded, so this moves the whole process, and everything it forks later starts inside.
# Checked, so a threaded perl could never leave a thread outside the limits.
sub join_cgroups {
  {
    opendir(my $dh, '/proc/self/task') or fail('open /proc/self/task');
    my @tasks = grep { /^\d+$/ } readdir($dh);
    closedir($dh);
    fail('the launcher is not single-threaded') unless @tasks == 1;
  }
  for my $f (@_) {
    open(my $fh, '>', $f) or fail("open $f");
    defined(syswrite($fh, '0')) or fail("join cgroup $f");
    close($fh);
  }
}

# mount(2); numbers are passed to syscall() as integers, strings as pointers, 0 as NULL (copies:
# syscall() must not be handed read-only literals).
sub try_mnt {
  my ($src, $dst, $type, $flags, $opts) = @_;
  return syscall($SYS_mount, $src, $dst, $type, $flags, $opts) == 0;
}
sub mnt { try_mnt(@_) or fail("mount $_[1]"); }

# SIOCGIFFLAGS / SIOCSIFFLAGS on "lo" (struct ifreq: 16-byte name + short flags, 40 bytes)
sub lo_up {
  socket(my $s, 2, 2, 0) or fail('socket');
  my $ifr = pack('a16 s x22', 'lo', 0);
  ioctl($s, 0x8913, $ifr) or fail('get lo flags');
  my $flags = unpack('x16 s', $ifr);
  ioctl($s, 0x8914, pack('a16 s x22', 'lo', $flags | 1)) or fail('set lo up');
  close($s);
}

# Fork the program as uid/gid with no capabilities and no_new_privs, under the seccomp filter, in
# $workdir when given (else the launcher's cwd); stay PID 1, reap, and exit with its status
# (128+n when it died of signal n): PID 1 ignores SIGTERM, and the namespace dies with it.
sub run_program {
  my ($uid, $gid, $workdir, $fprog, $env, @argv) = @_;
  my ($PR_SET_SECCOMP, $SECCOMP_MODE_FILTER, $PR_CAPBSET_DROP, $PR_SET_NO_NEW_PRIVS) = (22, 2, 24, 38);
  my $pid = fork() // fail('fork');
  if ($pid == 0) {
    # dropping from the bounding set needs CAP_SETPCAP, so before the uid switch; EINVAL past the last cap
    syscall($SYS_prctl, $PR_CAPBSET_DROP, $_, 0, 0, 0) for 0 .. 63;
    syscall($SYS_setgroups, 0, 0) == 0 or fail('setgroups');
    syscall($SYS_setresgid, $gid, $gid, $gid) == 0 or fail('setresgid');
    syscall($SYS_setresuid, $uid, $uid, $uid) == 0 or fail('setresuid');
    syscall($SYS_prctl, $PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 or fail('no_new_privs');
    if (defined $workdir) { chdir($workdir) or fail("chdir $workdir"); }
    # last: from here on the refused syscalls answer EPERM (exec and the env are not among them)
    syscall($SYS_prctl, $PR_SET_SECCOMP, $SECCOMP_MODE_FILTER, $fprog, 0, 0) == 0 or fail('seccomp');
    %ENV = %$env;
    exec { $argv[0] } @argv or fail("exec $argv[0]");
  }
  # exec keeps the pid (1) and the children; on failure perl goes on reaping below
  # (the label keeps `ps` naming the launcher and its code, as $0 did)
  exec { '/proc/self/fd/' . fileno($REAPER) } 'aether-reap', '--reap', $pid, '--', $0 if $REAPER;
  for (;;) {
    my $w = wait();
    last if $w == -1;
    next if $w != $pid;
    my $st = $?;
    exit(($st & 127) ? 128 + ($st & 127) : $st >> 8);
  }
  exit 125;
}

1;
