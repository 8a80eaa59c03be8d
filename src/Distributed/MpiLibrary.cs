using System.Runtime.InteropServices;

namespace OrtFinetune.Distributed;

/// <summary>
/// The Open MPI C library, loaded at run time and called through unmanaged function pointers: the
/// few calls the trainer needs, nothing more. There is no MPI package for .NET on Linux (MPI.NET on
/// NuGet is MS-MPI on Windows only), and a build-time binding would make every single-process run
/// depend on libmpi; this one is loaded only when <see cref="Communicator.FromEnvironment(Microsoft.Extensions.Logging.ILogger?)"/> finds a
/// multi-rank launch.
/// </summary>
/// <remarks>
/// <para><b>Why <c>dlopen(RTLD_NOW | RTLD_GLOBAL)</c>.</b> Open MPI is split into MCA components
/// (<c>mca_btl_vader.so</c>, <c>mca_pml_ob1.so</c>, ...) that <c>MPI_Init</c> itself dlopens from
/// <c>/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/</c>. Open MPI's build does not promise that
/// those plugins are linked against libmpi and libopen-pal: they may expect those symbols to be in the
/// global namespace already, as they are when a C program links <c>-lmpi</c> (the reason mpi4py and
/// other language bindings open libmpi with <c>RTLD_GLOBAL</c>). <see cref="NativeLibrary.Load(string)"/>
/// and <c>[DllImport]</c> open libraries with <c>RTLD_LOCAL</c>, where such a component fails to load
/// ("undefined symbol: ompi_..." or a silent fallback to fewer transports). Debian's 4.1.4 happens to
/// link its components and works either way; <c>RTLD_GLOBAL</c> is right for every build. Hence the
/// one P/Invoke to libc's <c>dlopen</c>; the handle it returns is an ordinary dlopen handle, which
/// <see cref="NativeLibrary.GetExport"/> (dlsym) accepts.</para>
/// <para><b>Handles are addresses.</b> In Open MPI's ABI, <c>MPI_Comm</c>, <c>MPI_Datatype</c>,
/// <c>MPI_Op</c>, <c>MPI_Errhandler</c> and <c>MPI_Info</c> are pointers to structs, and the
/// predefined handles are the addresses of exported global objects: <c>mpi.h</c> defines
/// <c>MPI_COMM_WORLD</c> as <c>&amp;ompi_mpi_comm_world</c>, <c>MPI_FLOAT</c> as
/// <c>&amp;ompi_mpi_float</c>, <c>MPI_SUM</c> as <c>&amp;ompi_mpi_op_sum</c>, and so on. dlsym of such
/// a data symbol returns exactly that address, so the handles below are the exports themselves.
/// <c>MPI_IN_PLACE</c> is the constant <c>(void*)1</c>. MPICH and its derivatives (Intel MPI,
/// MVAPICH) use integer handles instead: a library without <c>ompi_mpi_comm_world</c> is refused with
/// a message rather than called with the wrong ABI.</para>
/// <para>All functions return <c>MPI_SUCCESS</c> (0) or an error code; <see cref="Communicator"/>
/// checks every one.</para>
/// </remarks>
internal sealed unsafe class MpiLibrary
{
    /// <summary>Open MPI 3.x, 4.x and 5.x keep the soname <c>libmpi.so.40</c>; the unversioned name is
    /// the development symlink (libopenmpi-dev), tried second.</summary>
    internal static readonly string[] DefaultNames = ["libmpi.so.40", "libmpi.so"];

    public const int Success = 0;
    public const int ThreadSingle = 0, ThreadFunneled = 1, ThreadSerialized = 2, ThreadMultiple = 3;
    public const int CommTypeShared = 0;
    /// <summary><c>MPI_MAX_LIBRARY_VERSION_STRING</c> and <c>MPI_MAX_ERROR_STRING</c> are 256 in Open
    /// MPI; the buffers are larger in case another build differs.</summary>
    public const int MaxStringLength = 1024;
    /// <summary><c>MPI_IN_PLACE</c> in Open MPI's <c>mpi.h</c>.</summary>
    public static readonly void* InPlace = (void*)1;

    const int RTLD_NOW = 0x2, RTLD_GLOBAL = 0x100;

    public string Path { get; }

    // Predefined handles: addresses of Open MPI's global objects (see the remarks above).
    public readonly IntPtr CommWorld, Float, Double, Int64, UInt16, Byte, OpSum, OpMax, OpMin, ErrorsReturn, InfoNull;

    // int MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
    public readonly delegate* unmanaged<int*, byte***, int, int*, int> Init_thread;
    // int MPI_Initialized(int *flag), MPI_Finalized(int *flag)
    public readonly delegate* unmanaged<int*, int> Initialized, Finalized;
    // int MPI_Comm_rank(MPI_Comm, int *rank), MPI_Comm_size(MPI_Comm, int *size)
    public readonly delegate* unmanaged<IntPtr, int*, int> Comm_rank, Comm_size;
    // int MPI_Comm_split_type(MPI_Comm, int split_type, int key, MPI_Info, MPI_Comm *newcomm)
    public readonly delegate* unmanaged<IntPtr, int, int, IntPtr, IntPtr*, int> Comm_split_type;
    // int MPI_Comm_free(MPI_Comm *comm)
    public readonly delegate* unmanaged<IntPtr*, int> Comm_free;
    // int MPI_Comm_set_errhandler(MPI_Comm, MPI_Errhandler)
    public readonly delegate* unmanaged<IntPtr, IntPtr, int> Comm_set_errhandler;
    // int MPI_Allreduce(const void *sendbuf, void *recvbuf, int count, MPI_Datatype, MPI_Op, MPI_Comm)
    public readonly delegate* unmanaged<void*, void*, int, IntPtr, IntPtr, IntPtr, int> Allreduce;
    // int MPI_Bcast(void *buffer, int count, MPI_Datatype, int root, MPI_Comm)
    public readonly delegate* unmanaged<void*, int, IntPtr, int, IntPtr, int> Bcast;
    // int MPI_Barrier(MPI_Comm)
    public readonly delegate* unmanaged<IntPtr, int> Barrier;
    // int MPI_Abort(MPI_Comm, int errorcode)
    public readonly delegate* unmanaged<IntPtr, int, int> Abort;
    // int MPI_Finalize(void)
    public readonly delegate* unmanaged<int> Finalize;
    // int MPI_Op_create(MPI_User_function *function, int commute, MPI_Op *op)
    public readonly delegate* unmanaged<IntPtr, int, IntPtr*, int> Op_create;
    // int MPI_Op_free(MPI_Op *op)
    public readonly delegate* unmanaged<IntPtr*, int> Op_free;
    // int MPI_Get_library_version(char *version, int *resultlen)
    public readonly delegate* unmanaged<byte*, int*, int> Get_library_version;
    // int MPI_Error_string(int errorcode, char *string, int *resultlen)
    public readonly delegate* unmanaged<int, byte*, int*, int> Error_string;

    static readonly object s_gate = new();
    static MpiLibrary? s_loaded;

    /// <summary>Whether this process has loaded libmpi (tests check that single-process runs never do).</summary>
    public static bool IsLoaded => Volatile.Read(ref s_loaded) != null;

    /// <summary>Loads libmpi once per process (later calls return the same instance).</summary>
    public static MpiLibrary Load() => Load(DefaultNames);

    internal static MpiLibrary Load(IReadOnlyList<string> names)
    {
        lock (s_gate)
        {
            if (s_loaded != null) return s_loaded;
            if (!OperatingSystem.IsLinux())
                throw new DistributedException("The MPI binding supports Open MPI on Linux only.");
            var errors = new List<string>();
            foreach (var name in names)
            {
                var handle = DlOpen(name, out var error);
                if (handle != IntPtr.Zero)
                {
                    var lib = new MpiLibrary(handle, name);
                    Volatile.Write(ref s_loaded, lib);
                    return lib;
                }
                errors.Add(error);
            }
            throw new DistributedException($"{MpiLauncher.MissingMessage} (dlopen: {string.Join("; ", errors)})");
        }
    }

    MpiLibrary(IntPtr handle, string path)
    {
        Path = path;
        if (!NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out CommWorld))
            throw new DistributedException(
                $"{path} is not Open MPI (no ompi_mpi_comm_world): this binding speaks Open MPI's ABI only, " +
                "where handles are pointers; MPICH-family libraries use integer handles. Install Open MPI (apt-get install openmpi-bin).");
        Float = Symbol(handle, "ompi_mpi_float");
        Double = Symbol(handle, "ompi_mpi_double");
        Int64 = Symbol(handle, "ompi_mpi_int64_t");
        UInt16 = Symbol(handle, "ompi_mpi_uint16_t");
        Byte = Symbol(handle, "ompi_mpi_byte");
        OpSum = Symbol(handle, "ompi_mpi_op_sum");
        OpMax = Symbol(handle, "ompi_mpi_op_max");
        OpMin = Symbol(handle, "ompi_mpi_op_min");
        ErrorsReturn = Symbol(handle, "ompi_mpi_errors_return");
        InfoNull = Symbol(handle, "ompi_mpi_info_null");

        Init_thread = (delegate* unmanaged<int*, byte***, int, int*, int>)Symbol(handle, "MPI_Init_thread");
        Initialized = (delegate* unmanaged<int*, int>)Symbol(handle, "MPI_Initialized");
        Finalized = (delegate* unmanaged<int*, int>)Symbol(handle, "MPI_Finalized");
        Comm_rank = (delegate* unmanaged<IntPtr, int*, int>)Symbol(handle, "MPI_Comm_rank");
        Comm_size = (delegate* unmanaged<IntPtr, int*, int>)Symbol(handle, "MPI_Comm_size");
        Comm_split_type = (delegate* unmanaged<IntPtr, int, int, IntPtr, IntPtr*, int>)Symbol(handle, "MPI_Comm_split_type");
        Comm_free = (delegate* unmanaged<IntPtr*, int>)Symbol(handle, "MPI_Comm_free");
        Comm_set_errhandler = (delegate* unmanaged<IntPtr, IntPtr, int>)Symbol(handle, "MPI_Comm_set_errhandler");
        Allreduce = (delegate* unmanaged<void*, void*, int, IntPtr, IntPtr, IntPtr, int>)Symbol(handle, "MPI_Allreduce");
        Bcast = (delegate* unmanaged<void*, int, IntPtr, int, IntPtr, int>)Symbol(handle, "MPI_Bcast");
        Barrier = (delegate* unmanaged<IntPtr, int>)Symbol(handle, "MPI_Barrier");
        Abort = (delegate* unmanaged<IntPtr, int, int>)Symbol(handle, "MPI_Abort");
        Finalize = (delegate* unmanaged<int>)Symbol(handle, "MPI_Finalize");
        Op_create = (delegate* unmanaged<IntPtr, int, IntPtr*, int>)Symbol(handle, "MPI_Op_create");
        Op_free = (delegate* unmanaged<IntPtr*, int>)Symbol(handle, "MPI_Op_free");
        Get_library_version = (delegate* unmanaged<byte*, int*, int>)Symbol(handle, "MPI_Get_library_version");
        Error_string = (delegate* unmanaged<int, byte*, int*, int>)Symbol(handle, "MPI_Error_string");
    }

    static IntPtr Symbol(IntPtr handle, string name) =>
        NativeLibrary.TryGetExport(handle, name, out var address)
            ? address
            : throw new DistributedException($"libmpi has no symbol {name}: an Open MPI older than 3.0, or not Open MPI.");

    /// <summary>The library's text for an error code (<c>MPI_Error_string</c>), or the code alone.</summary>
    public string ErrorText(int code)
    {
        var buffer = stackalloc byte[MaxStringLength];
        int length = 0;
        return Error_string(code, buffer, &length) == Success && length > 0
            ? Marshal.PtrToStringUTF8((IntPtr)buffer, Math.Min(length, MaxStringLength)).TrimEnd('\0', ' ')
            : $"MPI error {code}";
    }

    // glibc 2.34+ has dlopen in libc.so.6; older glibc only in libdl.so.2. dlerror is called once before
    // dlopen: its P/Invoke stub is bound on the first call, and binding (dlsym) would clear the error text.
    static IntPtr DlOpen(string name, out string error)
    {
        try
        {
            LibC.dlerror();
            var h = LibC.dlopen(name, RTLD_NOW | RTLD_GLOBAL);
            error = h == IntPtr.Zero ? DlError(useLibDl: false) : "";
            return h;
        }
        catch (EntryPointNotFoundException)
        {
            LibDl.dlerror();
            var h = LibDl.dlopen(name, RTLD_NOW | RTLD_GLOBAL);
            error = h == IntPtr.Zero ? DlError(useLibDl: true) : "";
            return h;
        }
    }

    static string DlError(bool useLibDl)
    {
        var p = useLibDl ? LibDl.dlerror() : LibC.dlerror();
        return p == IntPtr.Zero ? "unknown error" : Marshal.PtrToStringUTF8(p) ?? "unknown error";
    }

    static class LibC
    {
        [DllImport("libc.so.6", EntryPoint = "dlopen", ExactSpelling = true)]
        public static extern IntPtr dlopen([MarshalAs(UnmanagedType.LPUTF8Str)] string file, int mode);
        [DllImport("libc.so.6", EntryPoint = "dlerror", ExactSpelling = true)]
        public static extern IntPtr dlerror();
    }

    static class LibDl
    {
        [DllImport("libdl.so.2", EntryPoint = "dlopen", ExactSpelling = true)]
        public static extern IntPtr dlopen([MarshalAs(UnmanagedType.LPUTF8Str)] string file, int mode);
        [DllImport("libdl.so.2", EntryPoint = "dlerror", ExactSpelling = true)]
        public static extern IntPtr dlerror();
    }
}
