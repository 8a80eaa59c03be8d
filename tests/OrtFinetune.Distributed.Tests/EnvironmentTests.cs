using Xunit.Abstractions;

namespace OrtFinetune.Distributed.Tests;

/// <summary>Launch detection and loading, without MPI: single-process runs never load libmpi.</summary>
public sealed class EnvironmentTests(ITestOutputHelper output)
{
    static Func<string, string?> Env(params (string Name, string Value)[] vars) =>
        name => vars.FirstOrDefault(v => v.Name == name).Value;

    [Fact]
    public void WithoutLauncherVariablesThereIsNoCommunicatorAndNoLibmpi()
    {
        if (LaunchInfo.FromEnvironment() is { } launch)
        {
            output.WriteLine($"Not checked: this test host was itself launched as rank {launch.Rank} of {launch.Size} ({launch.Source}).");
            return;
        }
        Assert.Null(Communicator.FromEnvironment());
        Assert.False(MpiLibrary.IsLoaded);
        Assert.DoesNotContain("libmpi", File.ReadAllText("/proc/self/maps"));
    }

    [Fact]
    public void OneRankIsNotDataParallel()
    {
        var env = Env(("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "1"));
        Assert.Equal(new LaunchInfo(0, 1, null, "Open MPI"), LaunchInfo.FromEnvironment(env));
        Assert.Null(Communicator.FromEnvironment(null, env, ["libmpi-that-does-not-exist.so"]));
    }

    [Fact]
    public void ReadsOpenMpiPmiAndPmixLaunches()
    {
        Assert.Equal(new LaunchInfo(1, 2, 1, "Open MPI"), LaunchInfo.FromEnvironment(Env(
            ("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("PMIX_RANK", "1"))));
        Assert.Equal(new LaunchInfo(3, 4, 1, "PMI"), LaunchInfo.FromEnvironment(Env(
            ("PMI_RANK", "3"), ("PMI_SIZE", "4"), ("MPI_LOCALRANKID", "1"))));
        Assert.Equal(new LaunchInfo(5, 8, 1, "PMIx"), LaunchInfo.FromEnvironment(Env(
            ("PMIX_RANK", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1"))));
        // PMIX_RANK without a size says nothing about the number of ranks.
        Assert.Null(LaunchInfo.FromEnvironment(Env(("PMIX_RANK", "0"))));
        Assert.Null(LaunchInfo.FromEnvironment(Env()));
    }

    [Fact]
    public void MalformedLaunchVariablesAreRefused()
    {
        var e = Assert.Throws<DistributedException>(() => LaunchInfo.FromEnvironment(Env(("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2"))));
        Assert.Contains("OMPI_COMM_WORLD_RANK='x'", e.Message);
        e = Assert.Throws<DistributedException>(() => LaunchInfo.FromEnvironment(Env(("PMI_RANK", "2"), ("PMI_SIZE", "2"))));
        Assert.Contains("PMI_RANK=2, PMI_SIZE=2", e.Message);
    }

    [Fact]
    public void SeveralRanksWithoutLibmpiNameThePackage()
    {
        var env = Env(("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2"));
        var e = Assert.Throws<DistributedException>(() => Communicator.FromEnvironment(null, env, ["libmpi-that-does-not-exist.so.40"]));
        Assert.Contains("apt-get install openmpi-bin", e.Message);
        Assert.Contains("libmpi-that-does-not-exist.so.40: cannot open shared object file", e.Message);
        Assert.False(MpiLibrary.IsLoaded);
    }
}
