namespace OrtFinetune.Distributed.Tests;

public sealed class MpiLauncherTests
{
    [Fact]
    public void ArgumentsForALocalRun()
    {
        Assert.Equal(["-n", "2", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "^openib", "-x", "TERM=dumb"],
            MpiLauncher.Arguments(2, slotsAvailable: 2, isRoot: false, hostfile: null));
        Assert.Equal(["-n", "2", "--hostfile", "hosts.txt", "--bind-to", "none", "--mca", "btl", "^openib", "-x", "TERM=dumb"],
            MpiLauncher.Arguments(2, slotsAvailable: 2, isRoot: false, hostfile: "hosts.txt"));
    }

    [Fact]
    public void MoreRanksThanSlotsAsRootWithAHostfile()
    {
        Assert.Equal(["-n", "4", "--oversubscribe", "--allow-run-as-root", "--hostfile", "hosts.txt", "--bind-to", "none", "--mca", "btl", "^openib", "-x", "TERM=dumb"],
            MpiLauncher.Arguments(4, slotsAvailable: 2, isRoot: true, hostfile: "hosts.txt"));
    }

    [Fact]
    public void MissingMessageNamesThePackage()
    {
        Assert.Contains("apt-get install openmpi-bin", MpiLauncher.MissingMessage);
        Assert.Contains("libopenmpi3", MpiLauncher.MissingMessage);
        Assert.Throws<ArgumentOutOfRangeException>(() => MpiLauncher.Arguments(0, 2, false, null));
    }

    [Fact]
    public void FindsMpirunWhereItIsInstalled()
    {
        var found = MpiLauncher.FindMpirun();
        if (File.Exists("/usr/bin/mpirun")) Assert.NotNull(found);
        if (found != null) Assert.True(Path.IsPathFullyQualified(found) && File.Exists(found));
    }
}
